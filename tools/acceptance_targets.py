"""What one GPU must reach, and the verdicts read off an acceptance run's figures: the speed targets of the
CUDA form, and the agreement of the eager and graph training runs."""

AGREEMENT = 0.015  # eager and graph runs: largest gap allowed in clean and in robust validation accuracy

# The speed targets of the project, for the CUDA form. bench.py's fastest bf16 graph variant per
# configuration, in ms per ALP iteration:
ITERATION_TARGETS_MS = {"resnet32/cifar10 b128 PGD-10": 10.0, "resnet18/cifar10 b128 PGD-10": 15.0,
                        "mnist/mnist b50 PGD-40": 4.0}
REFERENCE_MNIST_EPOCH_SECONDS = 6.0  # the reference's MNIST command, one epoch with its validation
ESTIMATE_TOLERANCE = 0.25  # ALP.py's printed seconds per epoch against the epoch it then took
SUITE_TARGET_SECONDS = {"mnist": 180.0, "cifar10": 600.0}  # the default suite on the 10,000 test images


def agreement(runs):
    """The largest gaps between the eager and graph runs' last validation accuracies, in points."""
    last = [run["epochs"][-1] for run in runs.values() if run.get("epochs")]
    if len(last) != 2 or None in (last[0]["clean_percent"], last[1]["clean_percent"]):
        return {"agree": False, "gap_points": None, "allowed_points": 100 * AGREEMENT}
    gaps = {key: round(abs(last[0][key] - last[1][key]), 2) for key in ("clean_percent", "robust_percent")}
    return {"agree": max(gaps.values()) <= 100 * AGREEMENT, "gap_points": gaps, "allowed_points": 100 * AGREEMENT}


def speed_targets(parts):
    """Each speed target of the CUDA form: what it asks, what this run measured (None: not measured), met."""
    rows = parts.get("timings", {}).get("rows", [])
    runs = parts.get("training", {}).get("runs", {})
    suites = parts.get("evaluation", {}).get("suites", {})
    targets = []
    for config, limit in ITERATION_TARGETS_MS.items():
        graphed = [r["ms_per_iteration"] for r in rows if r["config"] == config and "graph" in r["variant"]
                   and "bf16" in r["variant"] and not r["capture_failure"] and not r.get("compile_failure")]
        targets.append((f"{config}, bf16 graph: ms per iteration", limit, min(graphed) if graphed else None))
    mnist_epochs = runs.get("mnist-reference", {}).get("epochs", [])
    targets.append(("reference MNIST command: seconds per epoch, validation included (last epoch)",
                    REFERENCE_MNIST_EPOCH_SECONDS, mnist_epochs[-1]["seconds"] if mnist_epochs else None))
    graph = runs.get("graph", {})
    estimate, epochs = graph.get("estimated_seconds_per_epoch"), graph.get("epochs", [])
    targets.append(("ALP.py's estimate against the graph run's last epoch: relative error",
                    ESTIMATE_TOLERANCE, round(abs(estimate / epochs[-1]["seconds"] - 1), 3)
                    if estimate and epochs else None))
    for dataset, limit in SUITE_TARGET_SECONDS.items():
        suite = suites.get(dataset, {})
        targets.append((f"default {dataset} suite on the 10,000 test images: its attacks' seconds", limit,
                        suite["attack_seconds"] if suite.get("finished") else None))
    failed = parts.get("tests", {}).get("failed")
    targets.append(("tests failed", 0, failed))
    return [{"target": name, "at_most": limit, "measured": measured,
             "met": None if measured is None else measured <= limit} for name, limit, measured in targets]
