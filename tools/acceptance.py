"""Benchmark a GPU with this repository in one command: how fast it trains and attacks, whether its CUDA
graph trains as the eager step does, and whether the tests pass there. The figures go to OUT_DIR.

    python tools/acceptance.py OUT_DIR --data-root ROOT     # ROOT holds CIFAR-10; MNIST: see --mnist-root

On CUDA it runs, each part as a subprocess, within a time budget (--budget seconds, 500 by default, so that
the whole command ends within about 9 minutes):
  0. with --offline-data: a CIFAR-10 data root built by that tool, unless --data-root holds one already, and an
     MNIST-sized timing root (tools/timing_data.py) from the real MNIST test digits;
  1. bench.py: one ALP iteration of resnet32/cifar10 b128 PGD-10, resnet18/cifar10 b128 PGD-10 and
     mnist b50 PGD-40: compiled inside the CUDA graph, the graph, eager, with bf16 + channels_last and in
     float32;
  2. ALP.py resnet32 cifar10 -lp=cosine for 2 epochs twice, eager (--no-cuda-graph) and with the graph:
     seconds per epoch (validation included), the estimate each run printed, and validation accuracies,
     which must agree within 1.5 points; then the reference's MNIST command for 2 of its 84 epochs; and
     where there is a second GPU, a short MNIST run with the graph on --device cuda:1 (a graph recorded
     on another device than the current one would replay nothing; on one GPU the report says so);
  3. eval.py: the default attack suites on the whole 10,000 test images, MNIST on the reference command's
     checkpoint, then CIFAR-10 on the graph run's, one process per threat model (a cut keeps the finished
     ones), seconds per attack;
  4. pytest over the whole suite with --workers processes: passed, failed, skipped, the failures' names.
Run it with nothing else on the GPU or the CPU: the timings come first, and other jobs slow them. Each part
has its share of the budget; a part that runs past it is stopped and reported, and the later parts get the
time that earlier ones saved. The report ends with the speed targets (tools/acceptance_targets.py), each
measured or "not measured". The CIFAR-10 suite on 10,000 images may take more than its share: run the
command again with `--parts evaluation --work W`, W being the first call's --work, and it evaluates the
checkpoints the first call left there.

Without a GPU the same parts run in miniature (the MNIST net on MNIST-format data, a few iterations, one
epoch on a subset, FGSM only, no graph): a check of the command itself before you take it to a GPU; its
figures are no timings.

OUT_DIR gets acceptance.json (every figure, with the GPU's name and the torch version), acceptance.md (the
same as tables) and acceptance.log (every command with its output), rewritten after each part: a run cut
short still leaves what it measured. Exit status 0 if every part ran and passed, 1 if a test failed, the two
runs disagree or a part failed or ran out of time, 2 on bad input.

The command downloads nothing: --data-root must hold CIFAR-10, and --mnist-root (or --offline-data's tool)
MNIST. On a GPU machine without a network, install the packages of requirements*.txt there from wheels
downloaded elsewhere (`pip download -r requirements.txt -r requirements-dev.txt`), and bring the data roots.
"""
import argparse
import glob
import json
import os
import platform
import sys
import tempfile
from collections import namedtuple
from importlib.util import find_spec

import torch

# The project's root, one folder up: the scripts that the parts run and the modules imported here are there,
# whichever folder the command is run from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from acceptance_readings import attack_records, estimated_seconds_per_epoch, percent, read_run  # noqa: E402
from acceptance_parts import Parts, outcome  # noqa: E402
from acceptance_report import markdown  # noqa: E402
from acceptance_targets import agreement, speed_targets  # noqa: E402
from device_folder import prepare_device  # noqa: E402
from pytest_counts import junit_counts, streamed_counts  # noqa: E402
from timing_data import has_mnist, write_mnist_timing_root  # noqa: E402
from utils import CLIParser, default_device, fail  # noqa: E402


# What each part runs, by device. train: ALP.py's arguments for the eager and graph runs, less --device,
# --data-root, --out and the graph flag; reference_mnist: the reference's MNIST command (the defaults of
# MNIST-type data are its flags), for its seconds per epoch; eval_*: eval.py's selections, one process each
# (a cut keeps the finished ones), less the checkpoint, --data-root and --json; images: test images (None:
# the whole test split).
Form = namedtuple("Form", "bench train reference_mnist eval_mnist eval_cifar images second_device")
NORM_BY_NORM = [["--norms", norm] for norm in ("linf", "l2", "l1")]
FORMS = {
    "cuda": Form(bench=[], train=["resnet32", "cifar10", "-lp=cosine", "--epochs=2"],
                 reference_mnist=["mnist", "mnist", "--epochs=2"],
                 eval_mnist=NORM_BY_NORM, eval_cifar=NORM_BY_NORM, images=None,
                 second_device=["mnist", "mnist", "--epochs=1", "--subset=5000", "--cuda-graph"]),
    "cpu": Form(bench=["--configs", "mnist/mnist b50 PGD-40", "--steps=2", "--repeats=1", "--iterations=1"],
                train=["mnist", "mnist", "-lp=cosine", "--epochs=1", "--subset=20", "-b=10", "--steps=2",
                       "--epsilon=0.3", "--stepsize=0.1"],
                reference_mnist=["mnist", "mnist", "--epochs=1", "--subset=20", "-b=10", "--steps=2"],
                eval_mnist=[["--norms", "linf", "--attacks", "fgsm"]], eval_cifar=[], images=10, second_device=None),
}
# Each part's share of --budget, in run order (acceptance_parts.Parts turns them into deadlines); with --parts,
# the chosen parts share the budget.
SHARES = {"data": 0.04, "timings": 0.18, "training": 0.27, "second_device": 0.03, "evaluation": 0.28, "tests": 0.2}


# --- the parts ------------------------------------------------------------------------------------------

def script_command(script, args, offline_data):
    """python SCRIPT ARGS, through the offline data tool where given: the CIFAR-10 stand-in's decoded JPEGs
    are not the originals, whose md5 sums torchvision checks."""
    path = os.path.join(ROOT, script)
    if offline_data:
        return [sys.executable, offline_data, "run", path, *args]
    return [sys.executable, path, *args]


def run_data(parts, form_name, data_root, mnist_root, offline_data):
    """On CUDA, the data roots that are not there yet: the CIFAR-10 stand-in (the offline tool) and the MNIST
    timing stand-in (tools/timing_data.py, from the real test digits carried beside the tool)."""
    figures = {"ok": True, "seconds": 0.0, "built": []}
    if form_name == "cuda" and offline_data:
        if not os.path.exists(os.path.join(data_root, "cifar-10-batches-py", "test_batch")):
            verdict = outcome(*parts.run("data", [sys.executable, offline_data, "cifar10", data_root]))
            figures.update(ok=verdict["ok"], seconds=verdict["seconds"], built=["cifar10"],
                           **({"error": verdict["error"]} if not verdict["ok"] else {}))
        if not has_mnist(mnist_root):
            digits = os.path.join(os.path.dirname(os.path.dirname(offline_data)), "data", "mnist")
            write_mnist_timing_root(digits, mnist_root)
            figures["built"].append("mnist timing stand-in")
    parts.record("data", figures)


def run_timings(parts, form, device, work):
    path = os.path.join(work, "bench.json")
    status, seconds = parts.run("timings", [sys.executable, os.path.join(ROOT, "bench.py"), "--skip-attacks",
                                            *form.bench, f"--device={device}", "--json", path])
    figures = outcome(status, seconds)
    if os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)["training"]
        figures["rows"] = [{"config": r["config"], "variant": r["variant"], "pgd_steps": r["pgd_steps"],
                            "ms_per_iteration": round(1000 * r["seconds_per_iteration"], 2),
                            "seconds_per_epoch": round(r["seconds_per_epoch"], 1),
                            "capture_failure": r["capture_failure"], "compile_failure": r["compile_failure"]}
                           for r in rows]
        failures = [f"recording the CUDA graph failed in {r['config']}, {r['variant']}: {r['capture_failure']}"
                    for r in rows if r["capture_failure"]]  # those rows time the eager step
        failures += [f"compiling failed in {r['config']}, {r['variant']}: {r['compile_failure']}"
                     for r in rows if r["compile_failure"]]  # those rows time the graph uncompiled
        if failures:
            figures.update(ok=False, error="; ".join(failures))
    parts.record("timings", figures)


def train_run(parts, name, arguments, device, data_root, offline_data, work, part="training"):
    """One ALP.py run in WORK/train-NAME: its verdict, epochs, graph notes, estimate; and its checkpoint."""
    out = os.path.join(work, f"train-{name}")
    status, seconds = parts.run(part, script_command(
        "ALP.py", [*arguments, f"--device={device}", "--data-root", data_root, "--out", out], offline_data))
    rows, lines, last = read_run(out)
    run = {**outcome(status, seconds),
           "epochs": [{"epoch": int(r["epoch"]), "seconds": float(r["seconds"]),
                       "validation_seconds": float(r["validation_seconds"] or 0) or None,
                       "clean_percent": percent(r["clean_accuracy"]),
                       "robust_percent": percent(r["robust_accuracy"])} for r in rows],
           "graph_notes": [line for line in lines if line.startswith(("--cuda-graph", "CUDA graph:"))],
           "estimated_seconds_per_epoch": estimated_seconds_per_epoch(lines)}
    return run, (last if last and os.path.exists(last) else None)


def run_training(parts, form, device, data_root, mnist_root, offline_data, work):
    """Eager, then the CUDA graph (ALP.py's default on CUDA), then the reference's MNIST command. Returns
    the checkpoints to evaluate, by data set. On CUDA the graph must have run: a refusal or a failed
    recording (the run's log says which) fails the part."""
    runs, checkpoints = {}, {}
    plan = [("eager", [*form.train, "--no-cuda-graph"], data_root, offline_data),
            ("graph", [*form.train, "--cuda-graph"], data_root, offline_data),
            ("mnist-reference", form.reference_mnist, mnist_root, None)]
    for name, arguments, root, tool in plan:
        runs[name], last = train_run(parts, name, arguments, device, root, tool, work)
        if last and name == "graph":
            checkpoints[form.train[1]] = last
        if last and name == "mnist-reference":
            checkpoints["mnist"] = last
        parts.record("training", {"runs": runs})
        if not runs[name]["ok"] and "deadline" in runs[name]["error"]:
            break
    pair = {kind: runs[kind] for kind in ("eager", "graph") if kind in runs}
    figures = {"runs": runs, **agreement(pair)}
    graph_replayed = device == "cpu" or ("graph" in runs and not runs["graph"]["graph_notes"])
    figures["ok"] = all(run["ok"] for run in runs.values()) and len(runs) == 3 and figures["agree"] and graph_replayed
    parts.record("training", figures)
    return checkpoints


def run_second_device(parts, form, mnist_root, work):
    """Where a second CUDA device exists, a short ALP.py run with the CUDA graph on cuda:1: a graph captured
    on another device's stream would record nothing (the run then stops in one line), and a graph that
    was refused leaves a note in the log; else the figures say that it could not run."""
    count = torch.cuda.device_count() if form.second_device else 0
    if count < 2:
        parts.record("second_device", {"ok": True, "ran": False,
                                       "note": f"--device cuda:1 could not run: {count} CUDA device(s) here"})
        return
    run, _ = train_run(parts, "cuda1", form.second_device, "cuda:1", mnist_root, None, work, part="second_device")
    replayed = bool(run["epochs"]) and not run["graph_notes"]
    parts.record("second_device", {**run, "ran": True, "ok": run["ok"] and replayed,
                                   **({} if replayed or not run["ok"] else
                                      {"error": "the CUDA graph did not replay on cuda:1"})})


def run_evaluation(parts, form, device, roots, offline_data, checkpoints, work):
    """The default suite of each data set on its checkpoint, MNIST first (its target is the nearer), one
    eval.py process per selection. A suite's `seconds` are its processes' in this call (start-ups included);
    its `attack_seconds` the sum of its attacks' own, as eval.py reports them (across calls, for units that a
    second call continued)."""
    figures = {"ok": True, "images": form.images or "all", "suites": {}}
    plan = [("mnist", form.eval_mnist, None), ("cifar10", form.eval_cifar, offline_data)]
    for dataset, selections, tool in (step for step in plan if step[1]):
        suite = figures["suites"][dataset] = {"seconds": 0.0, "attack_seconds": 0.0, "finished": False,
                                              "attacks": []}
        if dataset not in checkpoints:
            figures.update(ok=False, error=f"no {dataset} checkpoint: its training run did not finish")
            continue
        for k, selection in enumerate(selections):
            # beside the run that trained the checkpoint: a second call (--parts evaluation) reprints what
            # finished and continues the units of what did not
            path = os.path.join(os.path.dirname(os.path.dirname(checkpoints[dataset])), f"eval-{dataset}-{k}.json")
            images = [f"--n={form.images}"] if form.images else []
            status, seconds = parts.run("evaluation", script_command(
                "eval.py", [checkpoints[dataset], *images, *selection, f"--device={device}", "--data-root",
                            roots[dataset], "--json", path], tool))
            verdict = outcome(status, seconds)
            suite["seconds"] = round(suite["seconds"] + seconds, 1)
            if not verdict["ok"]:
                figures.update(ok=False, error=f"{dataset}, eval.py {' '.join(selection)}: {verdict['error']}")
            if os.path.exists(path):
                with open(path) as f:
                    report = json.load(f)
                suite["attacks"] += [{"norm": norm, "epsilon": epsilon, "attack": label, "seconds": round(sec, 2),
                                      "robust_percent": percent(accuracy)}
                                     for norm, epsilon, label, sec, accuracy in attack_records(report)]
                suite["attack_seconds"] = round(sum(a["seconds"] for a in suite["attacks"]), 1)
            parts.record("evaluation", figures)
            if status is None:
                return
        suite["finished"] = figures["ok"]
        parts.record("evaluation", figures)


def run_tests(parts, tests, workers, work):
    """The counts from pytest's JUnit XML; from its verbose lines if it was stopped before writing that."""
    junit, output = os.path.join(work, "junit.xml"), os.path.join(work, "pytest.out")
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", f"--junitxml={junit}",
               *(["-n", str(workers)] if workers else []), *tests]
    status, seconds = parts.run("tests", command, output=output)
    figures = outcome(status, seconds)
    if os.path.exists(junit):
        figures.update(junit_counts(junit))
    else:
        with open(output) as f:
            figures.update(streamed_counts(f.read()))
        figures["counted_from"] = "pytest's progress lines: stopped before its JUnit XML"
    figures["ok"] = figures["ok"] and not figures["failed"]
    parts.record("tests", figures)


def previous_checkpoints(work_parent):
    """The checkpoints of the newest earlier acceptance run under work_parent, by data set (for --parts
    without training: the evaluation of a second call on the same machine)."""
    for folder in sorted(glob.glob(os.path.join(work_parent, "acceptance-*")), key=os.path.getmtime, reverse=True):
        found = {dataset: glob.glob(os.path.join(folder, f"train-{run}", "*", "last.pt"))
                 for dataset, run in (("cifar10", "graph"), ("mnist", "mnist-reference"))}
        if any(found.values()):
            return {dataset: paths[0] for dataset, paths in found.items() if paths}
    return {}


# --- main --------------------------------------------------------------------------------------------------

def build_parser():
    p = CLIParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", nargs="?", metavar="OUT_DIR", help="where acceptance.json, .md and .log go")
    p.add_argument("--data-root", help="data root holding the data set of the form that runs here (CIFAR-10 on "
                                       "CUDA, MNIST on CPU); built there first if --offline-data is given")
    p.add_argument("--offline-data", help="the offline data tool (offline_data.py): builds the CIFAR-10 stand-in "
                                          "in --data-root if absent, and runs ALP.py and eval.py without "
                                          "torchvision's md5 check")
    p.add_argument("--mnist-root", help="MNIST data root of the MNIST parts on CUDA (default: DATA_ROOT/mnist-timing, "
                                        "built there as tools/timing_data.py's timing stand-in from the real "
                                        "test digits beside --offline-data's tool if absent)")
    p.add_argument("--parts", nargs="+", choices=SHARES, default=list(SHARES),
                   help="the parts to run, sharing --budget (the evaluation without the training takes the "
                        "checkpoints of the newest earlier run under --work)")
    p.add_argument("--tests", nargs="+", default=["tests"], help="what pytest runs (default: the whole suite)")
    p.add_argument("--workers", type=int, default=None,
                   help="pytest-xdist processes (default: one per core, at most 16; 0: no xdist)")
    p.add_argument("--budget", type=float, default=500.0,
                   help="seconds for all the parts together (the default ends the command within about 9 "
                        "minutes)")
    p.add_argument("--work", help="folder in which a fresh folder takes the runs and intermediate files "
                                  "(default: the system's temporary folder)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if present); picks the form")
    # For the maintainers' offline GPU machines (tools/device_folder.py says what it gathers): not a user's step.
    p.add_argument("--prepare-device", nargs="?", const=".device", metavar="FOLDER", help=argparse.SUPPRESS)
    return p


def check_arguments(args):
    if args.out_dir is None:
        fail("OUT_DIR is required (or --prepare-device)")
    if args.budget <= 0:
        fail(f"--budget must be positive, not {args.budget:g}")
    if args.workers and find_spec("xdist") is None:
        fail("--workers needs pytest-xdist, which is not installed; use --workers 0")
    if args.workers is not None and args.workers < 0:
        fail(f"--workers must be 0 or more, not {args.workers}")
    if args.offline_data and not os.path.isfile(args.offline_data):
        fail(f"--offline-data: no file {args.offline_data}")
    if args.data_root is None:
        fail("--data-root is required: the data set of the training and evaluation parts")
    if not args.offline_data and not os.path.isdir(args.data_root):
        fail(f"--data-root: no folder {args.data_root}")
    if "evaluation" in args.parts and "training" not in args.parts and not args.work:
        fail("--parts evaluation without training needs --work: the folder of the earlier run's checkpoints")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.prepare_device:
        return prepare_device(args.prepare_device, ROOT, SHARED)
    check_arguments(args)
    device = args.device or default_device()
    form_name = "cuda" if device.startswith("cuda") else "cpu"
    if form_name == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA device here")
    form = FORMS[form_name]
    workers = args.workers if args.workers is not None else (min(16, os.cpu_count()) if find_spec("xdist") else 0)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.work:
        os.makedirs(args.work, exist_ok=True)
    work = tempfile.mkdtemp(prefix="acceptance-", dir=args.work)  # fresh: ALP.py and eval.py keep what exists
    data_root, offline_data = os.path.abspath(args.data_root), args.offline_data and os.path.abspath(args.offline_data)
    machine = (torch.cuda.get_device_name(device) if form_name == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores")
    report = {"machine": machine, "device": device, "form": form_name, "torch": torch.__version__,
              "cuda": torch.version.cuda, "python": platform.python_version(), "budget_seconds": args.budget,
              "elapsed_seconds": 0.0, "parts": {}}
    parts = Parts(args.out_dir, args.budget, report, SHARES, args.parts, cwd=ROOT)
    print(f"acceptance ({form_name} form) on {machine}, torch {torch.__version__}: figures in {args.out_dir}",
          flush=True)

    mnist_root = os.path.abspath(args.mnist_root or (data_root if form_name == "cpu"
                                                     else os.path.join(data_root, "mnist-timing")))
    if "data" in args.parts:
        run_data(parts, form_name, data_root, mnist_root, offline_data)
    if "timings" in args.parts:
        run_timings(parts, form, device, work)
    if "training" in args.parts:
        checkpoints = run_training(parts, form, device, data_root, mnist_root, offline_data, work)
    else:
        checkpoints = previous_checkpoints(args.work or tempfile.gettempdir())
    if "second_device" in args.parts:
        run_second_device(parts, form, mnist_root, work)
    if "evaluation" in args.parts:
        run_evaluation(parts, form, device, {"cifar10": data_root, "mnist": mnist_root}, offline_data, checkpoints,
                       work)
    if "tests" in args.parts:
        run_tests(parts, args.tests, workers, work)
    if form_name == "cuda":
        report["targets"] = speed_targets(report["parts"])

    failed = [name for name, figures in report["parts"].items() if not figures.get("ok")]
    report["verdict"] = f"FAILED: {', '.join(failed)}" if failed else "passed"
    parts.close()
    print(markdown(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
