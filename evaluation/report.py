"""The report as people read it: markdown tables, the masking checks, the sweep's plot; and as JSON, written
through the same atomic, fsync'd write as checkpoints."""
import json

from attacks.common import NORMS
from utils import percent, write_atomically

from .corruptions import SEVERITIES
from .suite import NORM_SYMBOLS, is_autoattack


def _accuracy(value):
    """A robust accuracy in percent, or – where there is none (an attack under --worst-case-only)."""
    return "–" if value is None else f"{100 * value:.2f}"


def _cell(value):
    if value is None:
        return "?"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def markdown(header, rows, align=None):
    """A markdown table; align: one ":--", "--:" or ":-:" per column (default: all centred)."""
    align = align or [":-:"] * len(header)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, align, *rows))


def _column(record):
    """A column's header: AutoAttack's says which version ran when it is not the standard one."""
    version = record["options"].get("version", "standard") if is_autoattack(record["attack"]) else "standard"
    return record["label"] if version == "standard" else f"{record['label']}-{version}"


def _accuracy_cells(table, clean_accuracy):
    return [_accuracy(clean_accuracy), *(_accuracy(a["robust_accuracy"]) for a in table["attacks"]),
            _accuracy(table["worst_case"]["robust_accuracy"])]


def _leverage(training):
    """The leverage cell: an ALP checkpoint's leverage; for a checkpoint of another method (CLP.py's and
    LSQ.py's pair or squeeze without one), the method's name."""
    method = training.get("method", "ALP")
    return _cell(training.get("leverage")) if method == "ALP" else method


def format_table(table, report):
    """The reference README's columns plus the worst case; one row, for this model."""
    training = report.get("training_args") or {}
    header = [NORM_SYMBOLS[table["norm"]], "leverage", "Net", "LP", "Nat(%)", *map(_column, table["attacks"]),
              "Worst"]
    row = [table["epsilon_label"], _leverage(training), report.get("model") or "?",
           _cell(training.get("learning_policy")), *_accuracy_cells(table, report["clean"]["accuracy"])]
    return markdown(header, [row])


def format_transfer_table(table, report):
    """Made on the source, measured on the target: their clean accuracies and the attacks' figures, which are
    the target's. The two are named above the table (format_legend), where their paths fit."""
    source, target = report["transfer"]["source"], report["transfer"]["target"]
    header = [NORM_SYMBOLS[table["norm"]], "Source Nat(%)", "Nat(%)", *map(_column, table["attacks"]), "Worst"]
    row = [table["epsilon_label"], _accuracy(source["clean_accuracy"]),
           *_accuracy_cells(table, target["clean_accuracy"])]
    return markdown(header, [row])


def format_legend(report):
    """What the tables' columns are, once, above the first table."""
    if report["transfer"]:
        columns = ("Source Nat(%) is the source's clean accuracy and Nat(%) the target's; each attack's column "
                   "is the target's robust accuracy (%) on the examples made on the source")
    else:
        columns = ("leverage (the weight of the logit-pairing term) and LP (the learning-rate policy) are the "
                   "checkpoint's training arguments, Net its network; Nat(%) is the clean accuracy and each "
                   "attack's column its robust accuracy (%)")
    return (f"Columns: {columns}; Worst counts a sample robust only if every attack of its row failed. Every "
            f"percentage is of all {report['evaluation']['n']} images: a sample misclassified clean is never "
            f"attacked and counts as broken.")


def format_details(table, worst_case_only=False):
    """Per attack, in the order they ran: accuracy, samples attacked and broken, mean size of the successful
    perturbations, seconds."""
    records = sorted(table["attacks"], key=lambda a: table["run_order"].index(a["label"]))
    rows = []
    for r in records:
        sizes = r["mean_perturbation"] or dict.fromkeys(NORMS)
        rows.append([_column(r), _accuracy(r["robust_accuracy"]), str(r["attacked"]), str(r["broken"]),
                     *("–" if sizes[k] is None else f"{sizes[k]:.4g}" for k in NORMS), f"{r['seconds']:.1f}"])
    attacked = ("the samples still robust after the attacks before it" if worst_case_only
                else "the samples classified correctly clean")
    return (markdown(["attack", "robust(%)", "attacked", "broken", "mean ℓ∞", "mean ℓ2", "mean ℓ1", "seconds"],
                     rows, [":--"] + ["--:"] * 7)
            + f"\n\n(attacked: {attacked}; mean ℓp: the size of the successful perturbations; seconds: the "
              f"attack's compute time)")


def format_sweep(sweep):
    labels = sweep["epsilon_labels"]
    rows = [[c["label"], *map(_accuracy, c["robust_accuracy"])] for c in sweep["curves"]]
    if grey_bound_says_something(sweep):
        rows.append(["grey-image bound", *map(_accuracy, sweep["grey_image_bound"])])
    table = markdown([f"{NORM_SYMBOLS[sweep['norm']]} ε", *labels], rows, [":--", *["--:"] * len(labels)])
    return table if grey_bound_says_something(sweep) else (
        table + "\n\n(grey-image bound: the clean accuracy at every ε here, so not shown)")


def grey_bound_says_something(sweep):
    """Whether the grey-image bound falls below the clean accuracy at some ε of the sweep: where no sample
    lies within ε of the grey image (MNIST up to ℓ∞ 0.3, say), it is the clean accuracy, a row of nothing."""
    return any(bound < sweep["clean_accuracy"] for bound in sweep["grey_image_bound"])


def format_corruptions(corruptions):
    rows = [[r["corruption"], *map(_accuracy, r["accuracy"]), _accuracy(r["mean"])]
            for r in corruptions["per_corruption"]]
    rows.append(["**mean**", *map(_accuracy, corruptions["severity_means"]),
                 f"**{_accuracy(corruptions['mean'])}**"])
    return markdown(["corruption", *(f"severity {s + 1}" for s in range(SEVERITIES)), "mean"], rows,
                    [":--", *["--:"] * (SEVERITIES + 1)])


# What to do once a check fires: the next step a flag asks for, by check.
NEXT_STEPS = {
    "constant-predictor": "train longer or on more images (--subset), then evaluate again",
    "fgsm-beats-pgd": "PGD fails to follow the gradient here: quote the Worst column (or AutoAttack's), not PGD's, "
                      "and look for masking with --sweep",
    "autoattack-beats-white-box": "the white-box figures overstate robustness: quote AutoAttack's or the Worst "
                                  "column, never the white-box attacks' alone",
    "larger-epsilon-not-lower": "an attack fails at the larger ε: evaluate more images (--images), and run "
                                "--sweep to see where accuracy rises",
    "large-epsilon-sanity": "gradient attacks fail even where every image can be turned grey: the gradients are "
                            "masked; quote AutoAttack's (its black-box Square) or the Worst column",
    "sweep-accuracy-rises": "the attack fails at the larger ε: quote the lowest accuracy at or above each ε",
    "sweep-above-grey-bound": "the attack is weaker than moving each sample to a grey image: the gradients are "
                              "masked; quote AutoAttack's figures (--attacks aa)",
}


def format_checks(checks):
    lines = ["Gradient-masking checks (a flag is a warning sign, not proof):"]
    for c in checks:
        status = ("not run" if c["flagged"] is None else "info" if c.get("kind") == "information"
                  else "FLAG" if c["flagged"] else "ok")
        rule = f" ({c['rule']})" if c["rule"] else ""
        lines.append(f"  [{status}] {c['check']} at {c['where']}: {c['message']}{rule}")
        if c["flagged"] and c.get("kind") != "information" and c["check"] in NEXT_STEPS:
            lines.append(f"      next: {NEXT_STEPS[c['check']]}")
    flagged = sum(bool(c["flagged"]) for c in checks)
    if flagged:
        lines.append(f"{flagged} flag(s): the accuracies above may overstate robustness; attack harder "
                     f"(more restarts, other losses, black-box attacks) before trusting them.")
    return "\n".join(lines)


def sweep_figure(report):
    """Accuracy vs epsilon, one line per attack, with the clean accuracy and the grey-image bound marked.
    The bound equals the clean accuracy at small epsilons: it is drawn dashed with hollow markers, above
    the dotted clean line, so that it stays visible where the two coincide."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["sweep"]
    symbol = NORM_SYMBOLS[sweep["norm"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for curve in sweep["curves"]:
        ax.plot(sweep["epsilons"], [100 * a for a in curve["robust_accuracy"]], marker="o", label=curve["label"])
    if grey_bound_says_something(sweep):
        ax.plot(sweep["epsilons"], [100 * b for b in sweep["grey_image_bound"]], linestyle="--", color="grey",
                marker="s", markerfacecolor="none", zorder=3, label="grey-image bound")
    ax.axhline(100 * sweep["clean_accuracy"], linestyle=":", color="black", zorder=1,
               label=f"clean {percent(sweep['clean_accuracy'])}")
    ax.set_xlabel(f"ε ({symbol} radius, pixels scaled to [0, 1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    attacks = ", ".join(c["label"] for c in sweep["curves"])
    ax.set_title(f"{report.get('model')} on {report['dataset']}: {attacks}, {symbol} "
                 f"({report['evaluation']['n']} test images)", fontsize=9, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweep(report, path):
    """sweep_figure, written to `path` as a PNG."""
    import matplotlib.pyplot as plt
    fig = sweep_figure(report)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def write_json(report, path):
    """Atomically and durably: readers never see half a file, and a crash keeps the previous one. Raises
    OSError (the temporary file removed)."""
    write_atomically(path, json.dumps(report, indent=2, default=str))
