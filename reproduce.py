"""Check one of the reference's published tables: train with its command, attack with its attacks, compare.

    python reproduce.py mnist                                        # the reference's MNIST table, in full
    python reproduce.py mnist --epochs 2 --subset 500 --images 200   # a shortened trial, labelled as one

1. training: ALP.py with the reference's command for the table, unchanged, in the folder's training/;
2. evaluation: eval.py on the final checkpoint (last.pt), one run per threat model with the attacks of the
   reference's table, on the full test split;
3. report: the reference's figures and ours side by side, each difference, and a flag on every figure
   farther from the reference's than run-to-run randomness explains (the rule is printed with them);
   written to the folder as report.json, report.md and report.png.
The two scripts' progress bars and estimates show as they run, and once ALP.py has timed its first batches
this script says how long training and evaluation will take. Killed or stopped by Ctrl-C at any moment, the
same command continues (ALP.py --resume, eval.py's units of work). A folder holding another table's or
another command's work is refused. --epochs, --subset and --images shorten the work: the folder, the
printout and every file then say it is a shortened trial, not a reproduction. The reference's figures, their
source and commands: reference.py.
"""
from interrupts import stop_in_one_line

if __name__ == "__main__":
    stop_in_one_line()  # first: a Ctrl-C while torch imports ends in one line too

import csv
import ctypes
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

from interrupts import Interrupted, interruptible
from reference import SOURCE, TABLES, TEST_IMAGES
from utils import CLIParser, default_device, duration, fail, write_atomically

ROOT = os.path.dirname(os.path.abspath(__file__))
NORM_SYMBOLS = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1", None: ""}  # None: the clean accuracy's row

# When a figure counts as outside run-to-run randomness: |ours - reference| > Z * se + SEED_SPREAD, in points.
SPREAD = {
    # se: the binomial standard error of the difference of two accuracies measured on n_ref and n test
    # images, if both models had the reference's accuracy p: sqrt(p(1-p)(1/n_ref + 1/n)) (the reference's own
    # p, not ours, so that a figure of 0% or 100% on a few images still gets its sampling error). 3 of them:
    # a table has up to 19 figures, and at 2 one figure in 22 would be flagged by chance alone.
    "z": 3,
    # Training randomness (seed, data order, PGD starts) moves a model's accuracies by more than its test
    # images' sampling does. Not measured here (one full run per seed is days on this project's CPU machine):
    # an allowance of 1 point, to be replaced by the spread of repeated runs once there are some.
    "seed_spread": 1.0,
}

# For the estimate: the gradient steps (forward + backward) each attack takes per image that resists it to
# the end, from its settings in eval.py's suite. Attacks that stop on the samples they break (DeepFool, C&W,
# AutoAttack) take fewer on a less robust model, so the evaluation's estimate is an upper bound.
GRADIENT_STEPS = {
    "fgsm": 1,
    "slide": 50,
    "deepfool": 50 * 10,  # 50 steps, each the gradients of the 10 candidate classes
    "cw": 9 * 1000,  # 9 binary-search steps of 1000 Adam steps
    "aa": 100 + 9 * 100 + 9 * 100 + 5000 / 3,  # APGD-CE, APGD-T and FAB-T (9 targets), Square's 5000 queries
}
PER_EVALUATION_STEPS = 1 + 20  # each eval.py run: the clean predictions and the sanity PGD-20 at ℓ∞ 0.5
# ALP.py's validation attack, whose timing gives the seconds of one gradient step per image on this device:
# PGD-100 for MNIST-type data and PGD-10 for CIFAR-type data (README, Train: Validation attack).
VALIDATION_PGD_STEPS = {"mnist": 100, "fashionmnist": 100, "cifar10": 10, "cifar100": 10}


def attack_steps(name):
    return int(name.split("-")[1]) if name.startswith("pgd-") else GRADIENT_STEPS[name]


# --- what a table runs -------------------------------------------------------------------------------------

def evaluations(table):
    """[(norm, [eval.py attack names])]: one eval.py run per norm, each with the attacks of the reference's
    columns at that norm (eval.py runs each at every ε its suite has there, as the reference's tables)."""
    by_norm = {}
    for threat_model in table.threat_models:
        names = by_norm.setdefault(threat_model.norm, [])
        names += [column.attack for column in threat_model.columns if column.attack not in names]
    return list(by_norm.items())


def training_argv(table, epochs=None):
    """ALP.py's arguments for the table: the reference's command, with another epoch count for a trial."""
    return [f"--epochs={epochs}" if epochs and arg.startswith("--epochs=") else arg for arg in table.training]


def reference_epochs(table):
    return next(int(arg.split("=")[1]) for arg in table.training if arg.startswith("--epochs="))


def evaluation_argv(norm, attacks):
    return ["--norms", norm, "--attacks", *attacks]


def tables_help():
    lines = ["tables (TABLE: the training command it runs, then one eval.py run per threat model on its last.pt):"]
    for name, table in TABLES.items():
        lines.append(f"  {name}: {table.title}")
        lines.append(f"    python ALP.py {' '.join(table.training)}")
        for norm, attacks in evaluations(table):
            lines.append(f"    python eval.py <run>/last.pt {' '.join(evaluation_argv(norm, attacks))}")
    lines.append(f"Figures and commands: reference.py, from {SOURCE['repository']} {SOURCE['file']} at commit "
                 f"{SOURCE['commit'][:7]}.")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------------

def build_parser():
    p = CLIParser(description=__doc__, epilog=tables_help())
    p.add_argument("table", metavar="TABLE", choices=TABLES, help="the reference's table: " + ", ".join(TABLES))
    trial = p.add_argument_group("shortened trial (labelled everywhere as not a reproduction)")
    trial.add_argument("--epochs", type=int, help="train this many epochs instead of the reference's")
    trial.add_argument("--subset", type=int, help="train and validate on N images of each split "
                                                           "(ALP.py --subset)")
    trial.add_argument("--images", type=int, help="evaluate the first N test images instead of all")
    p.add_argument("--data-root", help="folder of the data sets, for ALP.py and eval.py (default: theirs, "
                                       "./data)")
    p.add_argument("--out", help="this reproduction's folder (default: reproductions/TABLE, or "
                                 "reproductions/TABLE-trial-... for a shortened trial)")
    p.add_argument("--device", help="cpu, cuda, cuda:1..., for ALP.py and eval.py (default: cuda if present, "
                                     "else cpu)")
    return p


def shortening(args, table):
    """{flag: value} of the flags that make this a shortened trial ({} for a reproduction)."""
    cut = {}
    if args.epochs and args.epochs != reference_epochs(table):
        cut["epochs"] = args.epochs
    if args.subset:
        cut["subset"] = args.subset
    if args.images and args.images < TEST_IMAGES:
        cut["images"] = args.images
    return cut


def trial_label(table, cut, images=None):
    """The line that heads every output of a shortened trial (None for a reproduction)."""
    parts = []
    if "epochs" in cut:
        parts.append(f"{cut['epochs']} of the reference's {reference_epochs(table)} epochs")
    if "subset" in cut:
        parts.append(f"{cut['subset']} training images (--subset)")
    if images is not None and images < TEST_IMAGES:
        parts.append(f"{images} of the {TEST_IMAGES:,} test images")
    if not parts:
        return None
    return f"SHORTENED TRIAL, NOT A REPRODUCTION ({', '.join(parts)}): differences from the reference are expected"


# --- the folder --------------------------------------------------------------------------------------------

REQUEST = "request.json"


def claim(folder, request):
    """Make or reuse the folder for this request; one line and exit 2 where it holds other work."""
    path = os.path.join(folder, REQUEST)
    if os.path.isfile(folder):
        fail(f"--out {folder} is a file, not a folder")
    if os.path.isdir(folder) and os.listdir(folder):
        try:
            with open(path) as f:
                held = json.load(f)
        except (OSError, ValueError):
            fail(f"{folder} holds files that are not a reproduction's (no readable {REQUEST}): choose another --out")
        if held.get("table") != request["table"]:
            fail(f"{folder} holds the work of another table ({held.get('table')}, not {request['table']}): choose "
                 f"another --out, or remove that folder")
        if held != request:
            fail(f"{folder} holds the work of another command (`{held.get('command')}`, not "
                 f"`{request['command']}`): choose another --out, or remove that folder")
        return
    try:
        os.makedirs(folder, exist_ok=True)
        write_atomically(path, json.dumps(request, indent=2))
    except OSError as e:
        fail(f"cannot write {path} ({e.strerror or type(e).__name__})")


# --- running the scripts -----------------------------------------------------------------------------------

def end_with_parent():
    """In the child, before it runs: the kernel sends it SIGTERM if this script dies (kill -9), so that it
    stops with its one line and frees its folder instead of running on unseen. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_script(script, argv, watch=None):
    """Run a script of this repository with this Python, its output (progress bars included) straight to
    this script's. watch(), if given, is called every half second while it runs. The child has a session of
    its own, so that a Ctrl-C reaches it once, from here. Returns its exit status; a stop of this script
    (Interrupted) is passed on to it and raised once it has ended."""
    command = [sys.executable, os.path.join(ROOT, script), *argv]
    print(f"$ {' '.join(command[1:])}", flush=True)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               start_new_session=True, preexec_fn=end_with_parent)
    try:
        while process.poll() is None:
            time.sleep(0.5)
            if watch:
                watch()
        if watch:
            watch()
        return process.returncode
    except Interrupted as stop:
        process.send_signal(signal.SIGTERM if str(stop) == "SIGTERM" else signal.SIGINT)
        process.wait()
        raise


def run_or_stop(script, argv, stage, watch=None):
    status = run_script(script, argv, watch)
    if status in (130, 143):  # the child itself was stopped
        raise Interrupted("SIGTERM" if status == 143 else "Ctrl-C")
    if status != 0:
        fail(f"{stage} stopped: {script} ended with exit status {status} (its message above)",
             status=2 if status == 2 else 1)


class LogFollower:
    """Calls on_line(line) for each line that ALP.py adds to its run's log.txt (under `parent`) from now on."""

    def __init__(self, parent, on_line):
        self.parent, self.on_line = parent, on_line
        folder = run_folder(parent)
        self.path = os.path.join(folder, "log.txt") if folder else None
        self.offset = os.path.getsize(self.path) if self.path and os.path.isfile(self.path) else 0
        self.partial = ""

    def __call__(self):
        if self.path is None:
            folder = run_folder(self.parent)
            self.path = os.path.join(folder, "log.txt") if folder else None
        try:
            if os.path.getsize(self.path) < self.offset:  # a run started again writes its log anew
                self.offset, self.partial = 0, ""
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except (OSError, TypeError):
            return
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            self.on_line(line)


# --- training ----------------------------------------------------------------------------------------------

def run_folder(parent):
    """The one run folder ALP.py made under `parent`, or None."""
    folders = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(parent, "*", "args.json")))
    if len(folders) > 1:
        fail(f"{parent} holds {len(folders)} training runs, where reproduce.py makes one: remove the others")
    return folders[0] if folders else None


def epochs_done(folder):
    """The last epoch metrics.csv records (ALP.py writes it after last.pt), 0 for none."""
    try:
        with open(os.path.join(folder, "metrics.csv")) as f:
            return max((int(row["epoch"]) for row in csv.DictReader(f)), default=0)
    except (OSError, ValueError, KeyError):
        return 0


def train(argv, parent, epochs, estimate):
    """The final checkpoint of the training run, training or continuing it first."""
    folder = run_folder(parent)
    if folder and epochs_done(folder) >= epochs:
        print(f"training: done, {epochs} epochs in {folder}", flush=True)
        return os.path.join(folder, "last.pt")
    resume = folder is not None and os.path.isfile(os.path.join(folder, "last.pt"))
    run_or_stop("ALP.py", [*argv, *(["--resume"] if resume else [])], "training",
                LogFollower(parent, estimate.read_training_line))
    folder = run_folder(parent)
    if not folder or epochs_done(folder) < epochs:
        fail(f"training ended before its {epochs} epochs (see ALP.py's lines above)", status=1)
    return os.path.join(folder, "last.pt")


# --- evaluation --------------------------------------------------------------------------------------------

def read_report(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def evaluate(checkpoint, norm, attacks, json_path, common):
    """eval.py's report of the checkpoint at this norm, running or continuing it first."""
    report = read_report(json_path)
    if complete(report, checkpoint):
        print(f"evaluation at {NORM_SYMBOLS[norm]}: done, {json_path}", flush=True)
        return report
    run_or_stop("eval.py", [checkpoint, *evaluation_argv(norm, attacks), "--json", json_path, *common],
                f"evaluation at {NORM_SYMBOLS[norm]}")
    report = read_report(json_path)
    if not complete(report, checkpoint):
        fail(f"eval.py ended well but {json_path} holds no finished evaluation of {checkpoint}", status=1)
    return report


def complete(report, checkpoint):
    """Whether eval.py's report is a finished evaluation of this checkpoint."""
    requested = ((report or {}).get("evaluation") or {}).get("requested") or {}
    return bool(report and report.get("complete")) and requested.get("checkpoint") == checkpoint


# --- the estimate ------------------------------------------------------------------------------------------

def seconds_of(text):
    """utils.duration's text back to seconds: "45 s", "3.5 min", "4.2 h"."""
    value, unit = text.split()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


class Estimate:
    """How long the whole will take on this device, from what ALP.py prints as it starts: its own estimate
    of training, and the validation's timing, which gives the seconds of one gradient step per image, from
    which the evaluation's attacks are estimated by their gradient steps (GRADIENT_STEPS)."""

    def __init__(self, folder, dataset, images, evaluation_runs, device_note):
        self.path = os.path.join(folder, "estimate.json")
        self.dataset, self.images, self.runs, self.device_note = dataset, images, evaluation_runs, device_note
        self.validation_images = None

    def evaluation_steps(self, runs):
        return sum(PER_EVALUATION_STEPS + sum(attack_steps(a) for a in attacks) for _, attacks in runs)

    def read_training_line(self, line):
        found = re.search(r"(\d+) validation images", line)
        if found and "training," in line:
            self.validation_images = int(found.group(1))
        if not line.startswith("estimated:"):
            return
        total = re.search(r", (\d+(?:\.\d+)? (?:s|min|h)) for ", line)
        validation = (re.search(r"validation (\d+(?:\.\d+)? (?:s|min|h))\)", line)
                      or re.search(r"(\d+(?:\.\d+)? (?:s|min|h)) per validation", line))
        if not (total and validation and self.validation_images):
            return
        per_step = seconds_of(validation.group(1)) / (self.validation_images
                                                      * (VALIDATION_PGD_STEPS[self.dataset] + 1))
        try:
            write_atomically(self.path, json.dumps({"seconds_per_image_step": per_step}))
        except OSError:
            pass
        self.say(seconds_of(total.group(1)), per_step, self.runs)

    def say_for_evaluation(self, runs_left):
        """At a start after training: the evaluations left, from the timing kept in estimate.json."""
        kept = read_report(self.path) or {}
        if runs_left and "seconds_per_image_step" in kept:
            self.say(None, kept["seconds_per_image_step"], runs_left)

    def say(self, training_seconds, per_step, runs):
        steps = self.evaluation_steps(runs)
        evaluation_seconds = steps * self.images * per_step
        training = (f"training {duration(training_seconds)} (ALP.py's estimate above, validation included), "
                    if training_seconds is not None else "")
        total = (f"; about {duration(training_seconds + evaluation_seconds)} in all"
                 if training_seconds is not None else "")
        print(f"reproduce.py: estimated on {self.device_note}: {training}evaluation at most "
              f"{duration(evaluation_seconds)} ({len(runs)} eval.py run{'s' if len(runs) > 1 else ''} on "
              f"{self.images:,} test images, {steps:,.0f} gradient steps per image at the "
              f"{1000 * per_step:.3g} ms per image and step of ALP.py's validation; DeepFool, C&W and AutoAttack "
              f"stop on the samples they break, so they take less on a less robust model){total}", flush=True)


# --- the report --------------------------------------------------------------------------------------------

def allowed_difference(reference, n):
    """The largest |ours - reference| (points) that run-to-run randomness explains (SPREAD), ours measured on
    n test images."""
    p = reference / 100
    se = math.sqrt(p * (1 - p) * (1 / TEST_IMAGES + 1 / n))
    return SPREAD["z"] * 100 * se + SPREAD["seed_spread"]


def comparison_row(label, attack, reference, ours, n):
    difference = ours - reference
    allowed = allowed_difference(reference, n)
    return {"label": label, "attack": attack, "reference": reference, "ours": round(ours, 2),
            "difference": round(difference, 2), "allowed": round(allowed, 2), "outside": abs(difference) > allowed}


def compare(table, reports):
    """The report's content: the reference's figures and ours, per threat model, from eval.py's reports."""
    first = reports[0]
    n = first["evaluation"]["n"]
    clean = 100 * first["clean"]["accuracy"]
    found = {}
    for report in reports:
        for threat_model in report["threat_models"]:
            for record in threat_model["attacks"]:
                found[(threat_model["norm"], threat_model["epsilon_label"], record["label"])] = record
    threat_models = [{"norm": None, "epsilon": "clean", "rows": [comparison_row("Nat(%)", "clean", table.clean,
                                                                                clean, n)]}]
    for threat_model in table.threat_models:
        rows = []
        for column in threat_model.columns:
            record = found[(threat_model.norm, threat_model.epsilon, column.label)]
            rows.append(comparison_row(column.label, column.attack, column.figure,
                                       100 * record["robust_accuracy"], n))
        threat_models.append({"norm": threat_model.norm, "epsilon": threat_model.epsilon, "rows": rows})
    return n, threat_models


def format_text(title, label, threat_models):
    lines = [label] if label else []
    lines.append(f"{title}: the reference's figures ({SOURCE['repository']} {SOURCE['file']}, "
                 f"{SOURCE['commit'][:7]}) and ours, robust accuracy in %")
    for threat_model in threat_models:
        name = f"{NORM_SYMBOLS[threat_model['norm']]} {threat_model['epsilon']}".strip()
        lines.append(f"\n{name:<17} {'reference':>9} {'ours':>7} {'difference':>10} {'allowed':>8}")
        for row in threat_model["rows"]:
            lines.append(f"  {row['label']:<15} {row['reference']:>9.2f} {row['ours']:>7.2f} "
                         f"{row['difference']:>+10.2f} {'±' + format(row['allowed'], '.2f'):>8}"
                         f"{'  outside' if row['outside'] else ''}")
    return "\n".join(lines)


def format_markdown(title, label, threat_models, rule):
    lines = [f"# {title}: the reference and ours", ""]
    if label:
        lines += [f"**{label}**", ""]
    lines += [f"Reference: [{SOURCE['repository']} {SOURCE['file']}]({SOURCE['url']}). Robust accuracy in %.", ""]
    for threat_model in threat_models:
        lines += [f"## {NORM_SYMBOLS[threat_model['norm']]} {threat_model['epsilon']}".replace("##  ", "## "), "",
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
    bars = [(f"{NORM_SYMBOLS[t['norm']]} {t['epsilon']}\n{row['label']}".strip(), row)
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
    tmp = path + ".tmp.png"
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, path)


def write_report(folder, table, table_name, cut, training_command, checkpoint, reports, json_paths):
    n, threat_models = compare(table, reports)
    label = trial_label(table, cut, n)
    rule = (f"A figure is outside when |ours - reference| > {SPREAD['z']} standard errors of the difference "
            f"(binomial, the reference on {TEST_IMAGES:,} test images, ours on {n:,}) + {SPREAD['seed_spread']:g} "
            f"point of training randomness (an allowance, not measured here).")
    outside = [f"{NORM_SYMBOLS[t['norm']]} {t['epsilon']} {row['label']}".strip() for t in threat_models
               for row in t["rows"] if row["outside"]]
    content = {"kind": "shortened trial" if label else "reproduction", "label": label, "table": table_name,
               "title": table.title, "reference": SOURCE, "training": {"command": training_command,
                                                                       "checkpoint": checkpoint},
               "evaluation": {"images": n, "reports": json_paths}, "spread": {**SPREAD, "rule": rule},
               "threat_models": threat_models, "outside": outside}
    paths = {kind: os.path.join(folder, f"report.{kind}") for kind in ("json", "md", "png")}
    try:
        write_atomically(paths["json"], json.dumps(content, indent=2))
        write_atomically(paths["md"], format_markdown(table.title, label, threat_models, rule))
        plot(table.title, label, threat_models, paths["png"])
    except OSError as e:
        fail(f"cannot write the report in {folder} ({e.strerror or type(e).__name__})")
    print("\n" + format_text(table.title, label, threat_models), flush=True)
    print(f"\n{rule}\n{len(outside)} figure{'s' if len(outside) != 1 else ''} outside"
          f"{': ' + ', '.join(outside) if outside else ''}.", flush=True)
    if label:
        print(label, flush=True)
    print(f"Report: {paths['json']}, {paths['md']}, {paths['png']}", flush=True)


# --- main --------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("epochs", "subset", "images"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be a positive integer, not {getattr(args, flag)}")
    table = TABLES[args.table]
    cut = shortening(args, table)
    trial_name = "-".join(f"{key}{value}" for key, value in cut.items())
    folder = args.out or os.path.join("reproductions", args.table + (f"-trial-{trial_name}" if cut else ""))
    epochs = cut.get("epochs", reference_epochs(table))
    training = training_argv(table, cut.get("epochs")) + ([f"--subset={cut['subset']}"] if "subset" in cut else [])
    runs = evaluations(table)
    images = cut.get("images", TEST_IMAGES)
    command = " ".join(["reproduce.py", args.table, *(f"--{key} {value}" for key, value in cut.items())])
    claim(folder, {"table": args.table, "command": command, "training": training,
                   "evaluations": [evaluation_argv(norm, attacks) for norm, attacks in runs], "images": images})
    label = trial_label(table, cut, images)
    where = [*(["--data-root", args.data_root] if args.data_root else []),
             *(["--device", args.device] if args.device else [])]
    print(label or f"REPRODUCTION of the reference's {table.title} table", flush=True)
    print(f"reproduce.py: {table.title} in {folder}: training with {table.training_source} "
          f"({epochs} epoch{'s' if epochs > 1 else ''}), then {len(runs)} eval.py runs on {images:,} test images; "
          f"the estimate of both follows ALP.py's timing of its first batches", flush=True)
    estimate = Estimate(folder, table.dataset, images, runs, args.device or default_device())
    stage = "training"
    try:
        with interruptible():
            checkpoint = train([*training, "--out", os.path.join(folder, "training"), *where],
                               os.path.join(folder, "training"), epochs, estimate)
            checkpoint = os.path.abspath(checkpoint)
            json_paths = [os.path.abspath(os.path.join(folder, f"eval-{norm}.json")) for norm, _ in runs]
            left = [(norm, attacks) for (norm, attacks), path in zip(runs, json_paths)
                    if not complete(read_report(path), checkpoint)]
            if estimate.validation_images is None:  # training was done before this start
                estimate.say_for_evaluation(left)
            stage = "evaluation"
            common = [*(["--images", str(images)] if "images" in cut else []), *where]
            reports = [evaluate(checkpoint, norm, attacks, path, common)
                       for (norm, attacks), path in zip(runs, json_paths)]
            stage = "report"
            write_report(folder, table, args.table, cut, f"python ALP.py {' '.join(training)}", checkpoint,
                         reports, json_paths)
    except Interrupted as stop:
        print(f"reproduce.py: stopped by {stop} in the {stage}; the same command continues", file=sys.stderr)
        sys.exit(stop.exit_status)


if __name__ == "__main__":
    main()
