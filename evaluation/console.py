"""What eval.py prints and writes while it evaluates: the run's heading, each table as it finishes, the time
a round of attacks should still take, the JSON after every step, a finished evaluation's tables again.
Tables go to stdout, warnings and the lines that stop the script to stderr."""
import os
import sys

from training.validation import clean_barely_learnt
from utils import duration, fail, percent, say

from .files import check_report
from .report import (format_checks, format_corruptions, format_details, format_legend, format_sweep, format_table,
                     format_transfer_table, plot_sweep, write_json)

# Rounds that end sooner than this get no estimate: the line would be read after the round was over.
ESTIMATE_FROM_SECONDS = 30


def estimate_printer():
    """on_estimate for the Runner: the time a round of attacks should still take, as measured on the
    first batch of each of its attacks; or, early, at most how long."""
    def on_estimate(seconds, upper_bound=False):
        if upper_bound:
            say(f"estimated: at most {duration(seconds)} more for this round of attacks (the attacks timed so far "
                f"at their pace, the others at their full gradient steps per image; DeepFool, C&W and AutoAttack "
                f"stop on the samples they break; a closer estimate follows once each has run its first batch)",
                flush=True)
        elif seconds >= ESTIMATE_FROM_SECONDS:
            say(f"estimated: {duration(seconds)} more for this round of attacks (measured on the first batch of "
                  f"each)", flush=True)
    return on_estimate


def warn(message):
    say(f"{os.path.basename(sys.argv[0])}: warning: {message}", file=sys.stderr)


def save(report, path):
    try:
        write_json(report, path)
    except OSError as e:
        fail(f"--json {path} cannot be written ({e.strerror or type(e).__name__})")


def checked_report(json_path, requested, identity, force):
    """evaluation.check_report, its refusals as one line."""
    try:
        return check_report(json_path, requested, identity, force)
    except ValueError as e:
        fail(str(e))


def print_table(table, report):
    table_format = format_transfer_table if report["transfer"] else format_table
    say(table_format(table, report), "", format_details(table, report["evaluation"]["worst_case_only"]), "",
          sep="\n", flush=True)


def print_finished(report, json_path):
    """A finished evaluation is not run again: its tables, from its JSON (one line, never a traceback, where
    a part of it was edited away)."""
    try:
        _print_finished(report, json_path)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        fail(f"{json_path} cannot be printed again ({type(e).__name__} {e}: a part of it is missing or of another "
             f"type, edited or damaged); pass --force to evaluate again")


def _print_finished(report, json_path):
    say(f"{json_path} holds this evaluation, complete (--force runs it again)\n")
    if report["threat_models"] or report["transfer"]:
        say(format_legend(report), "", sep="\n")
    for table in report["threat_models"] + ((report["transfer"] or {}).get("threat_models") or []):
        print_table(table, report)
    if report["sweep"]:
        say(format_sweep(report["sweep"]), "", sep="\n")
    if report["corruptions"]:
        say(format_corruptions(report["corruptions"]), "", sep="\n")
    print_checks(report, json_path)


def print_corruptions(report, checkpoint, folder, json_path):
    say(f"{checkpoint}: {report['model']} on {report['dataset']}, "
          f"{report['corruptions']['images_per_severity']} images per severity from {folder}\n",
          format_corruptions(report["corruptions"]), f"\nAll figures: {json_path}", sep="\n")


def source_caution(report, transfer_from):
    """[one line] when a transfer's source has barely learnt: its examples are barely adversarial, so the
    target's high robust accuracy under them says nothing; else []."""
    if not report["transfer"]:
        return []
    why = clean_barely_learnt(report["transfer"]["source"]["clean_accuracy"], report["dataset"])
    return [f"the source {transfer_from} has barely learnt ({why}): examples made on it say little about the "
            f"target, so its robust accuracy here is no sign of robustness"] if why else []


def reporter(checkpoint, transfer_from, device, json_path, evaluation_record, warnings):
    """on_progress for the engine: prints what runs and each table as it finishes, and rewrites the JSON
    after every step (at once, so that a stale report of an earlier run never survives a crash)."""
    def on_progress(report, kind, record):
        if kind == "clean":
            report["evaluation"].update(evaluation_record)
            report["warnings"] = warnings + report["warnings"] + source_caution(report, transfer_from)
            for line in report["warnings"]:
                warn(line)
            say(f"{checkpoint}: {report['model']} on {report['dataset']}, epoch {report['epoch'] or '?'}; "
                  f"{report['evaluation']['n']} test images on {device}; clean accuracy "
                  f"{percent(report['clean']['accuracy'])}", flush=True)
            if report["transfer"]:
                source = report["transfer"]["source"]
                say(f"transfer attacks: made on {transfer_from} ({source['model']}, clean accuracy "
                      f"{percent(source['clean_accuracy'])}), measured on {checkpoint}", flush=True)
            elif report["aa_version"] != "standard":
                say(f"AutoAttack: pyautoattack's {report['aa_version']} version", flush=True)
            if not report["sweep"]:
                say(format_legend(report), flush=True)
            say(flush=True)
        elif kind == "table":
            print_table(record, report)
        save(report, json_path)
    return on_progress


def save_sweep_plot(report, json_path):
    """The sweep drawn as <json>.png beside the JSON, its curves printed."""
    plot_path = os.path.splitext(json_path)[0] + ".png"
    try:
        plot_sweep(report, plot_path)
    except OSError as e:
        fail(f"{plot_path} cannot be written ({e.strerror or type(e).__name__})")
    report["sweep"]["plot"] = plot_path
    say(format_sweep(report["sweep"]), f"\nPlot: {plot_path}\n", sep="\n")


def print_checks(report, json_path):
    say(format_checks(report["masking_checks"]), f"\nAll figures: {json_path}", sep="\n")


def stopped(stop, how_to_continue):
    """Ctrl-C or SIGTERM (interrupts.Interrupted): one line (none where how_to_continue is None: another process
    says it), and the exit status of a process ended by that signal."""
    if how_to_continue is not None:
        say(f"{os.path.basename(sys.argv[0])}: stopped by {stop}; {how_to_continue}", file=sys.stderr)
    sys.exit(stop.exit_status)
