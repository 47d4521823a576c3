"""reproduce.py's tables of rows (reference.ROW_TABLES): each row its own training run, by the script of its
method, and every row evaluated alike: their baseline attack alone, then our default ℓ∞ suite, whose worst
case stands beside their strongest attack and whose masking checks say where gradients mislead."""
import json
import os

from data import DATASETS
from evaluation.suite import SUITES, cli_name, columns_of
from utils import describe_os_error, fail, write_atomically

from .comparison import SPREAD, comparison_row, spread_rule
from .report import format_markdown, format_text, outside_figures, plot

WORST_CASE_NOTE = ("worst case: a sample counts as robust only if it survives every attack of our default ℓ∞ "
                   "suite ({attacks}); beside it the reference's strongest attack. A worst case below the "
                   "reference's is never outside: the evaluation should be at least as strong as theirs.")


def suite_columns(table):
    """The default ℓ∞ suite of the table's data set: [(label, registry name, options)]."""
    return SUITES[DATASETS[table.dataset].family]["linf"]["attacks"]


def suite_attacks(table):
    """eval.py's names of the default ℓ∞ suite of the table's data set."""
    return [cli_name(column[0]) for column in suite_columns(table)]


def row_evaluations(table):
    """[(name of its JSON file, norm, eval.py attack names, the figures it must hold as (norm, epsilon label,
    attack label))] of every row: the reference's baseline attack alone (its figure is an attack's own, not a
    worst case), then the default ℓ∞ suite."""
    baseline = [column[0] for column in columns_of(SUITES[DATASETS[table.dataset].family]["linf"], named=True)
                if cli_name(column[0]) == table.baseline]
    return [("baseline", "linf", [table.baseline], [("linf", table.epsilon, label) for label in baseline]),
            ("linf", "linf", suite_attacks(table),
             [("linf", table.epsilon, column[0]) for column in suite_columns(table)])]


def threat_model(report, epsilon):
    """The ℓ∞ table of eval.py's report at the epsilon the reference's figures are at."""
    (found,) = [t for t in report["threat_models"] if t["norm"] == "linf" and t["epsilon_label"] == epsilon]
    return found


def compare_row(table, row, baseline_report, suite_report):
    """One row of the comparison: clean accuracy, the baseline attack and our worst case, each beside the
    reference's figure, and the masking checks our suite raised."""
    n = suite_report["evaluation"]["n"]
    (baseline,) = threat_model(baseline_report, table.epsilon)["attacks"]
    worst = threat_model(suite_report, table.epsilon)["worst_case"]["robust_accuracy"]
    flags = [check for check in suite_report["masking_checks"]
             if check.get("flagged") and check.get("kind", "flag") == "flag"]
    return {"norm": None, "epsilon": row.title, "rows": [
        comparison_row("clean", "clean", row.clean, 100 * suite_report["clean"]["accuracy"], n, table.images),
        comparison_row(baseline["label"], table.baseline, row.baseline, 100 * baseline["robust_accuracy"], n,
                       table.images),
        comparison_row("worst case", "suite", row.strongest, 100 * worst, n, table.images, only_above=True)],
        "masking_flags": [f"{check['check']} ({check['where']})" for check in flags]}


def flag_lines(compared):
    return [f"  {group['epsilon']}: {', '.join(group['masking_flags']) or 'none'}" for group in compared]


def write_row_report(folder, table, table_name, label, n, compared, rows_run):
    """report.json, report.md and report.png of the rows evaluated so far: {"json", "md", "png"}: their
    paths. rows_run: {row name: {"command", "checkpoint", "reports"}}."""
    rule = spread_rule(n, table.images)
    note = WORST_CASE_NOTE.format(attacks=", ".join(suite_attacks(table)))
    title = row_report_title(table, n)
    content = {"kind": "shortened trial" if label else "reproduction", "label": label, "table": table_name,
               "title": table.title, "reference": table.source, "rows": rows_run,
               "evaluation": {"images": n, "epsilon": table.epsilon, "baseline": table.baseline,
                              "suite": suite_attacks(table), "worst_case": note},
               "spread": {**SPREAD, "rule": rule}, "threat_models": compared, "outside": outside_figures(compared)}
    markdown = format_markdown(title, label, compared, rule, table.source)
    markdown += "\n" + note + "\n\nMasking checks raised by the suite:\n\n" + "\n".join(flag_lines(compared)) + "\n"
    paths = {kind: os.path.join(folder, f"report.{kind}") for kind in ("json", "md", "png")}
    try:
        write_atomically(paths["json"], json.dumps(content, indent=2))
        write_atomically(paths["md"], markdown)
        plot(title, label, compared, paths["png"])
    except OSError as e:
        fail(describe_os_error(e))
    return paths


def row_report_title(table, n):
    return f"{table.title}, ℓ∞ {table.epsilon}, {n:,} test images"


def print_row_report(table, label, n, compared, paths):
    """The rows side by side with the reference's, the spread rule, the masking checks, and where the
    report is."""
    outside = outside_figures(compared)
    print("\n" + format_text(row_report_title(table, n), label, compared, table.source), flush=True)
    print("\n" + WORST_CASE_NOTE.format(attacks=", ".join(suite_attacks(table))), flush=True)
    print("Masking checks raised by the suite:\n" + "\n".join(flag_lines(compared)), flush=True)
    print(f"\n{spread_rule(n, table.images)}\n{len(outside)} figure{'s' if len(outside) != 1 else ''} outside"
          f"{': ' + ', '.join(outside) if outside else ''}.", flush=True)
    if label:
        print(label, flush=True)
    print(f"Report: {paths['json']}, {paths['md']}, {paths['png']}", flush=True)
