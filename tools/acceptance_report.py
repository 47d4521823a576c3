"""The acceptance run's report: acceptance.json (every figure) and acceptance.md (the same as tables)."""
import json
import os


def write_report(out_dir, report):
    with open(os.path.join(out_dir, "acceptance.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "acceptance.md"), "w") as f:
        f.write(markdown(report))


def markdown(report):
    parts = report["parts"]
    lines = [f"# Acceptance run: {report['machine']}", "",
             f"torch {report['torch']}, Python {report['python']}, {report['form']} form, "
             f"{report['elapsed_seconds']:.0f} s so far of a {report['budget_seconds']:.0f} s budget; "
             f"verdict: {report.get('verdict', 'unfinished')}", ""]
    if report.get("targets"):
        lines += ["## Speed targets", "", "| target | at most | measured | met |", "| :-- | --: | --: | :-- |"]
        lines += [f"| {t['target']} | {t['at_most']:g} | {'not measured' if t['measured'] is None else t['measured']} "
                  f"| {'—' if t['met'] is None else ('yes' if t['met'] else 'NO')} |" for t in report["targets"]]
        lines.append("")
    if "data" in parts:
        built = ", ".join(parts["data"].get("built", [])) or "nothing (all present)"
        lines += [f"Data roots built: {built}; {status_line(parts['data'])}", ""]
    if "timings" in parts:
        lines += ["## One ALP iteration (median of repeats after a warm-up)", "", status_line(parts["timings"]),
                  "", "| configuration | PGD steps | variant | ms / iteration | projected s / epoch |",
                  "| :-- | --: | :-- | --: | --: |"]
        lines += [f"| {r['config']} | {r['pgd_steps']} | {r['variant']}"
                  f"{' (recording failed: eager timed)' if r['capture_failure'] else ''}"
                  f"{' (compiling failed: uncompiled graph timed)' if r.get('compile_failure') else ''} | "
                  f"{r['ms_per_iteration']:.2f} | {r['seconds_per_epoch']:.1f} |"
                  for r in parts["timings"].get("rows", [])]
        lines.append("")
    if "training" in parts:
        training = parts["training"]
        allowed = training.get("allowed_points")  # absent until the runs have ended
        lines += ["## Training: eager, the CUDA graph, the reference's MNIST command (seconds include validation)",
                  "", f"eager and graph agree within {allowed:g} points: {training.get('agree')}, gaps (points): "
                  f"{training.get('gap_points')}" if allowed is not None else "agreement: not measured yet", "",
                  "| run | epoch | seconds | clean % | robust % |", "| :-- | --: | --: | --: | --: |"]
        for kind, run in training["runs"].items():
            lines += [f"| {kind} | {e['epoch']} | {e['seconds']:.1f} | {e['clean_percent']} | {e['robust_percent']} |"
                      for e in run["epochs"]]
            if run.get("estimated_seconds_per_epoch"):
                lines.append(f"| {kind} | its estimate: {run['estimated_seconds_per_epoch']:g} s per epoch | | | |")
            lines += [f"| {kind} | {status_line(run)} | | | |"] if not run["ok"] else []
            lines += [f"| {kind} | {note} | | | |" for note in run["graph_notes"]]
        lines.append("")
    if "second_device" in parts:
        second = parts["second_device"]
        lines += ["## The CUDA graph on a second device (--device cuda:1)", ""]
        if not second.get("ran"):
            lines += [second["note"], ""]
        else:
            lines += [status_line(second), ""]
            lines += [f"- epoch {e['epoch']}: {e['seconds']:.1f} s, clean {e['clean_percent']} %"
                      for e in second["epochs"]]
            lines += [f"- {note}" for note in second["graph_notes"]]
            lines.append("")
    if "evaluation" in parts:
        evaluation = parts["evaluation"]
        lines += [f"## Default attack suites on {evaluation.get('images', '?')} test images", "",
                  status_line(evaluation), ""]
        for dataset, suite in evaluation.get("suites", {}).items():
            lines += [f"{dataset}: {suite['attack_seconds']:.1f} s of attacks, {suite['seconds']:.1f} s of eval.py "
                      f"processes in this call{'' if suite['finished'] else ' (unfinished)'}", "",
                      "| norm | ε | attack | seconds | robust % |", "| :-- | :-- | :-- | --: | --: |"]
            lines += [f"| {a['norm']} | {a['epsilon']} | {a['attack']} | {a['seconds']:.2f} | {a['robust_percent']} |"
                      for a in suite["attacks"]]
            lines.append("")
    if "tests" in parts:
        tests = parts["tests"]
        lines += ["## Test suite", "", status_line(tests), "",
                  f"passed {tests.get('passed')}, failed {tests.get('failed')}, skipped {tests.get('skipped')}"
                  + (f" (counted from {tests['counted_from']})" if "counted_from" in tests else ""), ""]
        lines += [f"- failed: `{name}`" for name in tests.get("failures", [])]
        lines.append("")
    return "\n".join(lines)


def status_line(figures):
    if figures.get("ok"):
        return f"ok, {figures.get('seconds', 0):.0f} s"
    return f"FAILED: {figures.get('error', 'see below')}"
