"""Reading the acceptance run's figures out of what the project's scripts leave behind: ALP.py's run folder
(metrics.csv, log.txt with its estimate line) and eval.py's JSON report."""
import csv
import glob
import os

from training.clock import read_estimate_line


def read_run(run_parent):
    """(metrics rows, log lines, last.pt path) of the one run folder that ALP.py made under run_parent."""
    folders = glob.glob(os.path.join(run_parent, "*", "metrics.csv"))
    if len(folders) != 1:
        return [], [], None
    folder = os.path.dirname(folders[0])
    with open(folders[0]) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(folder, "log.txt")) as f:
        lines = f.read().splitlines()
    return rows, lines, os.path.join(folder, "last.pt")


def percent(value):
    """A fraction as ALP.py and eval.py store it (metrics.csv writes "" for none) as a percentage."""
    return None if value in (None, "") else round(100 * float(value), 2)


def estimated_seconds_per_epoch(log_lines):
    """The seconds per epoch, validation included, that ALP.py's estimate line printed (None without one)."""
    for line in log_lines:
        per_epoch = read_estimate_line(line).get("per_epoch")
        if per_epoch is not None:
            return per_epoch
    return None


def attack_records(node, norm=None, epsilon=None):
    """(norm, epsilon, label, seconds, robust accuracy) of every attack in eval.py's JSON, wherever it sits."""
    if isinstance(node, list):
        for item in node:
            yield from attack_records(item, norm, epsilon)
    elif isinstance(node, dict):
        norm, epsilon = node.get("norm", norm), node.get("epsilon_label", epsilon)
        if "label" in node and "seconds" in node:
            yield norm, epsilon, node["label"], node["seconds"], node.get("robust_accuracy")
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from attack_records(value, norm, epsilon)
