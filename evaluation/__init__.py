"""The evaluation engine: robust accuracy of any model mapping [0, 1] images to logits, under the data
set's attack suite, under transfer attacks, over a range of epsilons, and on common corruptions.

    report = evaluate(model, images, labels, dataset="cifar10", norms=["linf"])

Every entry point returns the dict that eval.py writes as JSON (the schema is in the README).

How samples are counted: a sample misclassified clean is non-robust and never attacked. An attack breaks
a sample when the model misclassifies its adversarial example, and only after that example has been
checked to lie in [0, 1] and inside the epsilon ball: an attack that leaves the threat model is a bug and
raises ThreatModelViolation. The worst case counts a sample robust only if it survives every attack of its
table. By default every attack runs on all clean-correct samples, so that each reports its own accuracy;
with worst_case_only, later attacks skip the samples earlier ones broke, and only the worst case is
reported. Each attack runs in units of one batch, each drawing from its own random stream, seeded from
(seed, norm, epsilon, attack, the batch's position), so that its result depends neither on which other
attacks or tables were selected nor on which process ran it.

The modules: suite (the tables as data, and the selection), units (how an attack runs: units of work, and a
runner that shares them out over processes), store (the digests of what is evaluated, and finished units
kept on disk), width (how many images a unit takes by default), engine (the entry points), checks (the
gradient-masking checks), corruptions, report (markdown, plot, JSON), files (eval.py's JSON report and units
folder, recognised by the digests of what they evaluated). eval.py's own, imported by name and never by the
engine: command_line (its options), inputs (checkpoints and test images, refused in one line), console (what
it prints as the evaluation runs).
"""
import importlib

# The public names, by the module that defines them. Each module loads when one of its names is first
# used, so that a module needing a light piece (training reads the suite's tables and the one-class
# check) does not load the engine, its units and every attack with it.
_NAMES = {
    "checks": ("CONSTANT_PREDICTOR_SHARE", "HEALTHY_SHARE", "SIGNIFICANCE", "SWEEP_GREY_SLACK", "Check",
               "chance_of_at_least", "constant_predictor_check", "masking_checks", "sweep_checks"),
    "corruptions": ("SEVERITIES", "evaluate_corruptions", "load_corruptions"),
    "engine": ("evaluate", "evaluate_sweep", "evaluate_transfer", "grey_image_bound", "grey_image_class"),
    "report": ("format_checks", "format_corruptions", "format_details", "format_legend", "format_sweep",
               "format_table", "format_transfer_table", "plot_sweep", "sweep_figure", "write_json"),
    "suite": ("AA_VERSIONS", "NORM_SYMBOLS", "SANITY", "SUITES", "attack_names",
              "check_sweep_epsilons", "cli_name", "parse_epsilon", "plan_summary", "plan_sweep",
              "plan_threat_models", "suite_summary", "epsilon_warnings"),
    "units": ("Job", "Runner", "ThreatModelViolation", "check_in_threat_model", "clean_predictions", "flat_norm",
              "random_stream", "run_unit", "shared", "stream_seed"),
    "store": ("UnitStore", "evaluation_digests", "weights_digest"),
    "width": ("CPU_BATCH_SIZE", "default_batch_size"),
    "files": ("check_report", "default_json_path", "evaluation_identity", "open_units", "recorded_batch_size",
              "remove", "units_folder"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    """A public name, or a module of the package (evaluation.units), loaded on first use."""
    if name in _NAMES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
