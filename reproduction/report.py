"""The comparison as a reproduction's report: report.json, report.md and report.png (a bar pair per figure,
reference and ours) in its folder, and the side-by-side table it prints."""
import io
import json
import os

from evaluation.suite import NORM_SYMBOLS as NORM_NAMES
from reference import SOURCE
from utils import describe_os_error, fail, write_atomically

from .comparison import SPREAD, spread_rule

NORM_SYMBOLS = {**NORM_NAMES, None: ""}  # None: the clean accuracy's row


def threat_model_name(threat_model):
    """"ℓ∞ 0.3", or "clean" for the clean accuracy's row."""
    return f"{NORM_SYMBOLS[threat_model['norm']]} {threat_model['epsilon']}".strip()


def outside_figures(threat_models):
    """The names of the figures the spread rule flags, as "ℓ∞ 0.3 PGD-100"."""
    return [f"{threat_model_name(t)} {row['label']}" for t in threat_models for row in t["rows"] if row["outside"]]


def format_text(title, label, threat_models, source=SOURCE):
    lines = [label] if label else []
    lines.append(f"{title}: the reference's figures ({source['repository']} {source['file']}, "
                 f"{source['commit'][:7]}) and ours, robust accuracy in %")
    for threat_model in threat_models:
        lines.append(f"\n{threat_model_name(threat_model):<17} {'reference':>9} {'ours':>7} {'difference':>10} "
                     f"{'allowed':>8}")
        for row in threat_model["rows"]:
            lines.append(f"  {row['label']:<15} {row['reference']:>9.2f} {row['ours']:>7.2f} "
                         f"{row['difference']:>+10.2f} {'±' + format(row['allowed'], '.2f'):>8}"
                         f"{'  outside' if row['outside'] else ''}")
    return "\n".join(lines)


def format_markdown(title, label, threat_models, rule, source=SOURCE):
    lines = [f"# {title}: the reference and ours", ""]
    if label:
        lines += [f"**{label}**", ""]
    lines += [f"Reference: [{source['repository']} {source['file']}]({source['url']}). Robust accuracy in %.", ""]
    for threat_model in threat_models:
        lines += [f"## {threat_model_name(threat_model)}", "",
                  "| | reference | ours | difference | allowed | outside |", "| :-- | --: | --: | --: | --: | :-: |"]
        lines += [f"| {row['label']} | {row['reference']:.2f} | {row['ours']:.2f} | {row['difference']:+.2f} | "
                  f"{row['allowed']:.2f} | {'yes' if row['outside'] else ''} |" for row in threat_model["rows"]]
        lines.append("")
    lines.append(rule)
    return "\n".join(lines) + "\n"


def plot(title, label, threat_models, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bars = [(f"{threat_model_name(t)}\n{row['label']}", row)
            for t in threat_models for row in t["rows"]]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.75 * len(bars)), 4.5))
    positions = range(len(bars))
    axes.bar([x - 0.2 for x in positions], [row["reference"] for _, row in bars], 0.4, label="reference")
    axes.bar([x + 0.2 for x in positions], [row["ours"] for _, row in bars], 0.4, label="ours")
    for x, (_, row) in zip(positions, bars):
        if row["outside"]:
            axes.annotate("*", (x + 0.2, row["ours"]), ha="center", va="bottom")
    axes.set_xticks(list(positions), [name for name, _ in bars], fontsize=7)
    axes.set_ylabel("accuracy (%)")
    axes.set_xlabel("*: outside the run-to-run spread (report.md says how it is set)", fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_title(title + ("\n" + label.split(" (")[0] if label else ""), fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    plt.close(figure)
    write_atomically(path, image.getvalue())


def write_report(folder, table, table_name, label, n, threat_models, training, json_paths):
    """report.json, report.md and report.png in the folder: {"json", "md", "png"}: their paths. training:
    {"command", "checkpoint"}; json_paths: eval.py's reports. One line and exit 2 where they cannot be
    written."""
    rule = spread_rule(n)
    content = {"kind": "shortened trial" if label else "reproduction", "label": label, "table": table_name,
               "title": table.title, "reference": SOURCE, "training": training,
               "evaluation": {"images": n, "reports": json_paths}, "spread": {**SPREAD, "rule": rule},
               "threat_models": threat_models, "outside": outside_figures(threat_models)}
    paths = {kind: os.path.join(folder, f"report.{kind}") for kind in ("json", "md", "png")}
    try:
        write_atomically(paths["json"], json.dumps(content, indent=2))
        write_atomically(paths["md"], format_markdown(table.title, label, threat_models, rule))
        plot(table.title, label, threat_models, paths["png"])
    except OSError as e:
        fail(describe_os_error(e))
    return paths


def print_report(title, label, n, threat_models, paths):
    """The side-by-side table, the spread rule and the figures it flags, and where the report is."""
    outside = outside_figures(threat_models)
    print("\n" + format_text(title, label, threat_models), flush=True)
    print(f"\n{spread_rule(n)}\n{len(outside)} figure{'s' if len(outside) != 1 else ''} outside"
          f"{': ' + ', '.join(outside) if outside else ''}.", flush=True)
    if label:
        print(label, flush=True)
    print(f"Report: {paths['json']}, {paths['md']}, {paths['png']}", flush=True)
