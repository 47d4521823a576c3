"""Robust accuracy of a trained checkpoint under a suite of attacks.

    python eval.py runs/<run>/<checkpoint>.pt [--norms linf l2 l1] [--attacks fgsm pgd-50 ...] [--n N]

Model, data set and training arguments come from the checkpoint. For every threat model (norm, epsilon) of
the data set's suite (SUITES below) it prints a markdown table in the reference README's layout -- clean
accuracy, accuracy under each attack and the per-sample worst case over them -- followed by each attack's
details (mean size of its successful perturbations, seconds), then checks for gradient masking, which ALP
is known to cause (Engstrom et al. 2018; Mosbach et al. 2018). Every figure also goes to a JSON file.

How samples are counted: a sample misclassified clean is non-robust and never attacked. An attack breaks
a sample when the model misclassifies its adversarial example, and only after that example has been
checked to lie in [0, 1] and inside the epsilon ball: an attack that leaves the threat model is a bug and
stops the evaluation. The worst case counts a sample robust only if it survives every attack of its
table. By default every attack runs on all clean-correct samples, so that each reports its own accuracy;
with --worst-case-only, later attacks skip the samples earlier ones broke, and only the worst case is
reported.
"""
import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from attacks import ATTACKS
from attacks.common import NORMS, flat_norm
from data import DATASETS, DataError, load_split
from checkpoints import CheckpointError, load_model as load_model_file
from utils import CLIParser, default_device, fail

# --- the suite ---------------------------------------------------------------------------------------------

# family -> norm -> epsilons (written as the tables print them) and attacks (column label, registry name,
# options). Step sizes are relative to epsilon, as in foolbox, which produced the reference numbers.
SUITES = {
    "cifar": {
        "linf": {"epsilons": ["8/255", "16/255"], "attacks": [
            ("FGSM", "fgsm", {}),
            ("PGD-10", "pgd-linf", {"steps": 10, "rel_stepsize": 0.25}),
            ("PGD-40", "pgd-linf", {"steps": 40, "rel_stepsize": 0.1}),
            ("DeepFool", "deepfool-linf", {"steps": 50, "candidates": 10, "overshoot": 0.02}),
            ("AA", "aa-linf", {"version": "standard"}),
        ]},
        "l2": {"epsilons": ["0.5"], "attacks": [
            ("PGD-50", "pgd-l2", {"steps": 50, "rel_stepsize": 0.1}),
            ("DeepFool", "deepfool-l2", {"steps": 50, "candidates": 10, "overshoot": 0.02}),
            ("C&W", "cw-l2", {"binary_search_steps": 9, "steps": 1000, "stepsize": 0.01, "confidence": 0,
                              "initial_const": 1e-3}),
            ("AA", "aa-l2", {"version": "standard"}),
        ]},
        "l1": {"epsilons": ["12"], "attacks": [
            ("PGD-50", "pgd-l1", {"steps": 50, "rel_stepsize": 0.05}),
            ("SLIDE", "slide", {"steps": 50, "rel_stepsize": 0.05}),
            ("AA", "aa-l1", {"version": "standard"}),
        ]},
    },
    "mnist": {
        "linf": {"epsilons": ["0.3"], "attacks": [
            ("FGSM", "fgsm", {}),
            ("PGD-50", "pgd-linf", {"steps": 50, "rel_stepsize": 1 / 30}),
            ("PGD-100", "pgd-linf", {"steps": 100, "rel_stepsize": 1 / 30}),
            ("DeepFool", "deepfool-linf", {"steps": 50, "candidates": 10, "overshoot": 0.02}),
            ("AA", "aa-linf", {"version": "standard"}),
        ]},
        "l2": {"epsilons": ["2"], "attacks": [
            ("PGD-100", "pgd-l2", {"steps": 100, "rel_stepsize": 0.05}),
            ("DeepFool", "deepfool-l2", {"steps": 50, "candidates": 10, "overshoot": 0.02}),
            ("C&W", "cw-l2", {"binary_search_steps": 9, "steps": 1000, "stepsize": 0.01, "confidence": 0,
                              "initial_const": 1e-3}),
            ("AA", "aa-l2", {"version": "standard"}),
        ]},
        "l1": {"epsilons": ["10"], "attacks": [
            ("PGD-50", "pgd-l1", {"steps": 50, "rel_stepsize": 0.05}),
            ("SLIDE", "slide", {"steps": 50, "rel_stepsize": 0.05}),
            ("AA", "aa-l1", {"version": "standard"}),
        ]},
    },
}

# Run by default for every data set: at linf 0.5 any image can be turned into uniform grey, so a model
# cannot truly be robust on more than the samples of the class it gives the grey image (~10% with 10
# balanced classes). PGD leaving more than that means it cannot follow the gradient: masking. (A model that
# predicts one class everywhere keeps exactly that class's share: it is useless, not masked.)
SANITY = {"label": "PGD-20", "attack": "pgd-linf", "norm": "linf", "epsilon": "0.5",
          "options": {"steps": 20, "rel_stepsize": 0.1}, "max_accuracy": 0.10}

# Gradient-masking flags, as shares of the evaluated samples. FGSM is one step of PGD without the random
# start; on a model with honest gradients it should break (almost) nothing that PGD misses. AutoAttack
# (APGD-CE, APGD-T, FAB-T and the black-box Square) usually beats plain PGD by 1-3 points on adversarially
# trained models (its DLR and targeted losses); a wider lead over every white-box attack of the table
# suggests that their gradients lead nowhere.
FGSM_ONLY_MAX = 0.005
AA_ONLY_MAX = 0.03

TOLERANCE = 1e-5  # float32 slack, absolute and relative, when checking that x_adv is in the threat model

NORM_SYMBOLS = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}


def cli_name(label):
    """--attacks name of a column: its label in lowercase ("C&W" -> "cw")."""
    return label.lower().replace("&", "")


def parse_epsilon(text):
    """A positive number, or a fraction such as 8/255."""
    numerator, _, denominator = text.partition("/")
    value = float(numerator) / float(denominator) if denominator else float(numerator)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"epsilon must be a positive number, not {text}")
    return value


def is_one_step(name):
    return name == "fgsm"


def is_pgd(name):
    return name.startswith("pgd-")


def is_autoattack(name):
    return name.startswith("aa-")


def run_order(attacks):
    """Order for --worst-case-only: PGD, then FGSM, then the rest in table order, AutoAttack last. Each
    attack then sees only what the earlier ones left, so FGSM's new breaks are exactly those no PGD made,
    and AutoAttack's those no other attack made: the masking checks read the same in both modes."""
    def rank(attack):
        name = attack[1]
        return 0 if is_pgd(name) else 1 if is_one_step(name) else 3 if is_autoattack(name) else 2
    return sorted(attacks, key=rank)  # stable: table order within each rank


def plan_threat_models(family, norms, attack_names, epsilons):
    """[(norm, epsilon label, epsilon, attacks)] of the family's suite, narrowed by the command line.
    Raises ValueError for a selection that names something the suite does not have."""
    suite = SUITES[family]
    norms = [norm for norm in NORMS if norm in (norms or NORMS)]
    plan, used = [], set()
    for norm in norms:
        attacks = [a for a in suite[norm]["attacks"] if attack_names is None or cli_name(a[0]) in attack_names]
        used.update(cli_name(a[0]) for a in attacks)
        for label in epsilons or suite[norm]["epsilons"]:
            if attacks:
                plan.append((norm, label, parse_epsilon(label), attacks))
    unknown = sorted(set(attack_names or ()) - used)
    if unknown:
        offered = sorted({cli_name(a[0]) for norm in norms for a in suite[norm]["attacks"]})
        raise ValueError(f"{', '.join(unknown)}: not in the {family} suite for {' '.join(norms)} "
                         f"(it has {', '.join(offered)})")
    return plan


# --- command line ------------------------------------------------------------------------------------------

def epsilon_argument(text):
    try:
        parse_epsilon(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"must be a positive number or fraction such as 8/255, not {text!r}")
    return text.strip()


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def parse_args(argv=None):
    attack_choices = sorted({cli_name(a[0]) for suite in SUITES.values() for norm in suite.values()
                             for a in norm["attacks"]})
    parser = CLIParser(description="Robust accuracy of a checkpoint under the data set's attack suite.")
    parser.add_argument("checkpoint", help="a .pt file written by ALP.py")
    parser.add_argument("--norms", nargs="+", choices=NORMS, help="threat models to run (default: all)")
    parser.add_argument("--attacks", nargs="+", choices=attack_choices, metavar="NAME",
                        help=f"attacks to run (default: all of the suite): {', '.join(attack_choices)}")
    parser.add_argument("--epsilon", nargs="+", type=epsilon_argument,
                        help="epsilons for every selected norm instead of the suite's (e.g. 8/255 0.1)")
    parser.add_argument("--n", type=positive_int, help="evaluate the first N test images (default: all)")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=500)
    parser.add_argument("--data-root", default="./data")
    parser.add_argument("--json", help="where to write every figure (default: beside the checkpoint, "
                                       "runs/<run>/<name>.eval.json)")
    parser.add_argument("--progress", action="store_true", help="a progress bar per attack")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--worst-case-only", action="store_true",
                        help="attack only the samples that earlier attacks of the table left robust; "
                             "report only the worst case")
    parser.add_argument("--seed", type=int, default=0, help="for the attacks' random starts")
    return parser.parse_args(argv)


# --- model and data ----------------------------------------------------------------------------------------

def load_model(path, device):
    """(model in eval mode on device, meta); bad checkpoints stop the script."""
    try:
        model, meta = load_model_file(path)
    except CheckpointError as e:
        fail(str(e))
    return model.to(device), meta


def resolve_device(name):
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        fail(f"--device {name} cannot be used ({str(e).splitlines()[0]})")
    return device


def as_float(images):
    return images.float() / 255


def clean_correct(model, images, labels, batch_size):
    """Which test samples the model classifies correctly: computed once, shared by every attack."""
    correct = []
    with torch.no_grad():
        for begin in range(0, len(labels), batch_size):
            logits = model(as_float(images[begin:begin + batch_size]))
            correct.append((logits.argmax(1) == labels[begin:begin + batch_size]).cpu())
    return torch.cat(correct)


# --- running one attack ------------------------------------------------------------------------------------

class ThreatModelViolation(Exception):
    """An attack returned an image outside [0, 1] or outside its epsilon ball: a bug in the attack."""


def check_in_threat_model(label, x, x_adv, norm, epsilon):
    """Every returned example (not only the successful ones: any is a contract breach) must be a valid
    image within epsilon of its original in the threat model's norm."""
    if x_adv.shape != x.shape:
        raise ThreatModelViolation(f"{label} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise ThreatModelViolation(f"{label} returned non-finite pixels")
    low, high = x_adv.min().item(), x_adv.max().item()
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise ThreatModelViolation(f"{label} returned pixels outside [0, 1] (from {low:.6g} to {high:.6g})")
    sizes = flat_norm(x_adv.double() - x.double(), norm)
    limit = epsilon * (1 + TOLERANCE) + TOLERANCE
    outside = sizes > limit
    if outside.any():
        raise ThreatModelViolation(
            f"{label} left the {norm} ball of radius {epsilon:.6g} on {int(outside.sum())} of {len(x)} "
            f"samples (largest perturbation {sizes.max().item():.6g})")


def run_attack(model, attack, label, norm, epsilon, images, labels, indices, batch_size, robust_share=1.0,
               progress=False):
    """Attack the samples at `indices` in batches. Returns (broken: bool over indices, summed l-inf, l2 and
    l1 sizes of the successful perturbations, seconds). robust_share (the share of all samples that
    `indices` makes up) turns the bar's running survival rate into an estimate of the final accuracy."""
    broken = torch.zeros(len(indices), dtype=torch.bool)
    size_sums = dict.fromkeys(NORMS, 0.0)
    bar = tqdm(total=len(indices), desc=f"{label} ({norm} {epsilon:.4g})", unit="img", disable=not progress,
               file=sys.stderr)
    start = time.perf_counter()
    for begin in range(0, len(indices), batch_size):
        index = indices[begin:begin + batch_size]
        x, y = as_float(images[index]), labels[index]
        x_adv = attack(model, x, y)
        check_in_threat_model(label, x, x_adv, norm, epsilon)
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y
        delta = (x_adv - x)[fooled]
        for size_norm in NORMS:
            size_sums[size_norm] += flat_norm(delta.double(), size_norm).sum().item()
        broken[begin:begin + len(index)] = fooled.cpu()  # .cpu() waits for the device: timing is honest
        done = begin + len(index)
        bar.update(len(index))
        bar.set_postfix(robust=f"{100 * robust_share * (1 - broken[:done].float().mean().item()):.2f}%")
    bar.close()
    return broken, size_sums, time.perf_counter() - start


def attack_record(label, name, options, attacked, broken, size_sums, seconds, n, own_accuracy):
    count = int(broken.sum())
    return {
        "label": label, "name": cli_name(label), "attack": name, "options": options,
        "attacked": attacked, "broken": count,
        # Under --worst-case-only an attack sees only what earlier ones left: no accuracy of its own.
        "robust_accuracy": (attacked - count) / n if own_accuracy else None,
        "mean_perturbation": {k: v / count for k, v in size_sums.items()} if count else None,
        "seconds": seconds,
    }


def evaluate_threat_model(model, norm, epsilon_label, epsilon, attacks, images, labels, correct, args):
    """Every attack of one table. Returns (the table's record, {label: bool mask of the samples that
    attack broke}). Under --worst-case-only the masks are disjoint, each attack's new breaks only."""
    n = len(labels)
    robust = correct.clone()  # the worst case so far
    broken_by, records = {}, {}
    for label, name, options in (run_order(attacks) if args.worst_case_only else attacks):
        attack = ATTACKS[name](epsilon, **options)
        targets = robust if args.worst_case_only else correct
        indices = targets.nonzero().flatten()
        broken, size_sums, seconds = run_attack(
            model, attack, label, norm, epsilon, images, labels, indices.to(images.device), args.batch_size,
            robust_share=len(indices) / n, progress=args.progress)
        broken_by[label] = torch.zeros(n, dtype=torch.bool)
        broken_by[label][indices] = broken
        robust &= ~broken_by[label]
        records[label] = attack_record(label, name, options, len(indices), broken, size_sums, seconds, n,
                                       own_accuracy=not args.worst_case_only)
    table = {
        "norm": norm, "epsilon": epsilon, "epsilon_label": epsilon_label,
        "attacks": [records[label] for label, _, _ in attacks],
        "run_order": list(records),
        "worst_case": {"robust": int(robust.sum()), "robust_accuracy": int(robust.sum()) / n},
    }
    return table, broken_by


def run_sanity_attack(model, images, labels, correct, args):
    """PGD at linf 0.5, and the accuracy that the uniform grey image alone leaves: an upper bound on the
    true robust accuracy there, since grey lies within 0.5 of every image."""
    epsilon = parse_epsilon(SANITY["epsilon"])
    with torch.no_grad():
        grey_class = model(torch.full_like(as_float(images[:1]), 0.5)).argmax(1).item()
    grey_survivors = correct & (labels.cpu() == grey_class)
    attack = ATTACKS[SANITY["attack"]](epsilon, **SANITY["options"])
    indices = correct.nonzero().flatten()
    broken, size_sums, seconds = run_attack(
        model, attack, f"sanity {SANITY['label']}", SANITY["norm"], epsilon, images, labels,
        indices.to(images.device), args.batch_size, robust_share=len(indices) / len(labels),
        progress=args.progress)
    record = attack_record(SANITY["label"], SANITY["attack"], SANITY["options"], len(indices), broken, size_sums,
                           seconds, len(labels), own_accuracy=True)
    return {"norm": SANITY["norm"], "epsilon": epsilon, "epsilon_label": SANITY["epsilon"], **record,
            "grey_image_class": grey_class, "grey_image_accuracy": int(grey_survivors.sum()) / len(labels)}


# --- gradient-masking checks -------------------------------------------------------------------------------

def share_broken_only_by(suspects, others, broken_by):
    """Number of samples that some attack in `suspects` broke and none in `others` did."""
    mask = torch.stack([broken_by[label] for label in suspects]).any(0)
    if others:
        mask &= ~torch.stack([broken_by[label] for label in others]).any(0)
    return int(mask.sum())


def masking_checks(tables, broken_by_table, sanity, n):
    """A list of {check, norm, epsilon, where, value, threshold, flagged, rule, message}; flagged is None
    where the selected attacks do not allow the check."""
    checks = []
    for table, broken_by in zip(tables, broken_by_table):
        names = {a["label"]: a["attack"] for a in table["attacks"]}
        one_step = [label for label, name in names.items() if is_one_step(name)]
        pgd = [label for label, name in names.items() if is_pgd(name)]
        autoattack = [label for label, name in names.items() if is_autoattack(name)]
        white_box = [label for label in names if label not in autoattack]
        if one_step:
            checks.append(_share_check(
                "fgsm-beats-pgd", table, one_step, pgd, broken_by, n, FGSM_ONLY_MAX,
                "a one-step attack beating its multi-step versions"))
        if autoattack:
            checks.append(_share_check(
                "autoattack-beats-white-box", table, autoattack, white_box, broken_by, n, AA_ONLY_MAX,
                "AutoAttack (APGD-CE, APGD-T, FAB-T and the black-box Square) beating the white-box attacks: "
                "their gradients may be masked, or they are too weak to trust"))
    for norm in NORMS:
        by_epsilon = sorted((t for t in tables if t["norm"] == norm), key=lambda t: t["epsilon"])
        for smaller, larger in zip(by_epsilon, by_epsilon[1:]):
            gap = larger["worst_case"]["robust_accuracy"] - smaller["worst_case"]["robust_accuracy"]
            checks.append({
                "check": "larger-epsilon-not-lower", "norm": norm, "epsilon": larger["epsilon"],
                "smaller_epsilon": smaller["epsilon"],
                "where": f"{NORM_SYMBOLS[norm]} {larger['epsilon_label']} vs {smaller['epsilon_label']}",
                "value": gap, "threshold": 0.0, "flagged": gap > 0,
                "rule": "flag if the larger epsilon leaves a higher worst-case accuracy",
                "message": f"worst-case accuracy {_percent(larger['worst_case']['robust_accuracy'])} at the "
                           f"larger epsilon vs {_percent(smaller['worst_case']['robust_accuracy'])}"})
    accuracy, grey = sanity["robust_accuracy"], sanity["grey_image_accuracy"]
    checks.append({
        "check": "large-epsilon-sanity", "norm": sanity["norm"], "epsilon": sanity["epsilon"],
        "where": f"{NORM_SYMBOLS[sanity['norm']]} {sanity['epsilon_label']}",
        "value": accuracy, "threshold": SANITY["max_accuracy"],
        "flagged": accuracy > SANITY["max_accuracy"] and accuracy > grey,
        "rule": f"flag above {_percent(SANITY['max_accuracy'])} accuracy unless the grey image leaves as much",
        "message": f"{sanity['label']} leaves {_percent(accuracy)} accuracy; a uniform grey image, within reach "
                   f"of every sample, leaves {_percent(grey)}"})
    return checks


def _share_check(check, table, suspects, others, broken_by, n, threshold, what):
    """Flag when the `suspects` alone broke more than `threshold` of the n samples."""
    common = {"check": check, "norm": table["norm"], "epsilon": table["epsilon"],
              "where": f"{NORM_SYMBOLS[table['norm']]} {table['epsilon_label']}", "threshold": threshold}
    if not others:
        return {**common, "value": None, "flagged": None, "rule": "",
                "message": f"not checked: {'/'.join(suspects)} has nothing to be compared with in this table"}
    count = share_broken_only_by(suspects, others, broken_by)
    missed = f"{others[0]} did not break" if len(others) == 1 else f"none of {', '.join(others)} broke"
    return {**common, "value": count / n, "flagged": count / n > threshold,
            "rule": f"flag above {_percent(threshold)} of the samples",
            "message": f"{'/'.join(suspects)} broke {count} of {n} samples ({_percent(count / n)}) that "
                       f"{missed}: {what}"}


# --- output ------------------------------------------------------------------------------------------------

def _percent(fraction):
    return f"{100 * fraction:.2f}%"


def _cell(value):
    if value is None:
        return "?"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def format_table(table, meta, clean_accuracy):
    """The reference README's columns plus the worst case; one row, for this checkpoint."""
    training = meta.get("args", {})
    labels = [a["label"] for a in table["attacks"]]
    header = [NORM_SYMBOLS[table["norm"]], "leverage", "Net", "LP", "Nat(%)", *labels, "Worst"]
    accuracies = [a["robust_accuracy"] for a in table["attacks"]]
    row = [table["epsilon_label"], _cell(training.get("leverage")), meta.get("model", "?"),
           _cell(training.get("learning_policy")), f"{100 * clean_accuracy:.2f}",
           *("–" if acc is None else f"{100 * acc:.2f}" for acc in accuracies),
           f"{100 * table['worst_case']['robust_accuracy']:.2f}"]
    return "\n".join("| " + " | ".join(cells) + " |"
                     for cells in (header, [":-:"] * len(header), row))


def format_details(records):
    """Per attack: accuracy, samples attacked and broken, mean size of the successful perturbations."""
    lines = ["| attack | robust(%) | attacked | broken | mean ℓ∞ | mean ℓ2 | mean ℓ1 | seconds |",
             "| :-- | --: | --: | --: | --: | --: | --: | --: |"]
    for r in records:
        sizes = r["mean_perturbation"] or dict.fromkeys(NORMS)
        accuracy = "–" if r["robust_accuracy"] is None else f"{100 * r['robust_accuracy']:.2f}"
        lines.append(f"| {r['label']} | {accuracy} | {r['attacked']} | {r['broken']} | "
                     + " | ".join("–" if sizes[k] is None else f"{sizes[k]:.4g}" for k in NORMS)
                     + f" | {r['seconds']:.1f} |")
    return "\n".join(lines)


def format_checks(checks):
    lines = ["Gradient-masking checks (a flag is a warning sign, not proof):"]
    for c in checks:
        status = "not run" if c["flagged"] is None else "FLAG" if c["flagged"] else "ok"
        rule = f" ({c['rule']})" if c["rule"] else ""
        lines.append(f"  [{status}] {c['check']} at {c['where']}: {c['message']}{rule}")
    flagged = sum(bool(c["flagged"]) for c in checks)
    if flagged:
        lines.append(f"{flagged} flag(s): the accuracies above may overstate robustness; attack harder "
                     f"(more restarts, other losses, black-box attacks) before trusting them.")
    return "\n".join(lines)


def write_json(report, path):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(tmp, path)  # readers never see half a file, even with --json on a file being watched


# --- main --------------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device)
    family = DATASETS[meta["dataset"]].family
    try:
        plan = plan_threat_models(family, args.norms, args.attacks, args.epsilon)
    except ValueError as e:
        fail(str(e))
    json_path = args.json or os.path.splitext(args.checkpoint)[0] + ".eval.json"
    if not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        fail(f"--json {json_path}: no such folder")
    try:
        images, labels = load_split(meta["dataset"], args.data_root, train=False)
    except DataError as e:
        fail(str(e))
    images, labels = images[:args.n].to(device), labels[:args.n].to(device)
    n = len(labels)
    torch.manual_seed(args.seed)

    correct = clean_correct(model, images, labels, args.batch_size)
    clean_accuracy = int(correct.sum()) / n
    print(f"{args.checkpoint}: {meta.get('model')} on {meta['dataset']}, epoch {meta.get('epoch') or '?'}; "
          f"{n} test images on {device}; clean accuracy {_percent(clean_accuracy)}\n", flush=True)
    report = {
        "checkpoint": args.checkpoint, "epoch": meta.get("epoch"), "model": meta.get("model"),
        "dataset": meta["dataset"], "num_classes": meta.get("num_classes"), "training_args": meta.get("args"),
        "evaluation": {"n": n, "batch_size": args.batch_size, "device": str(device), "seed": args.seed,
                       "worst_case_only": args.worst_case_only, "data_root": args.data_root,
                       "norms": args.norms, "attacks": args.attacks, "epsilons": args.epsilon},
        "complete": False,
        "clean": {"correct": int(correct.sum()), "accuracy": clean_accuracy},
        "threat_models": [], "sanity": None, "masking_checks": None,
    }
    write_json(report, json_path)  # at once: a stale report of an earlier run must not survive a crash
    broken_by_table = []
    for norm, epsilon_label, epsilon, attacks in plan:
        try:
            table, broken_by = evaluate_threat_model(model, norm, epsilon_label, epsilon, attacks, images,
                                                     labels, correct, args)
        except ThreatModelViolation as e:
            fail(f"attack bug, evaluation stopped: {e} ({NORM_SYMBOLS[norm]} epsilon {epsilon_label})", status=1)
        report["threat_models"].append(table)
        broken_by_table.append(broken_by)
        write_json(report, json_path)  # long runs keep what they finished
        in_run_order = sorted(table["attacks"], key=lambda a: table["run_order"].index(a["label"]))
        print(format_table(table, meta, clean_accuracy), "", format_details(in_run_order), "", sep="\n",
              flush=True)

    try:
        report["sanity"] = run_sanity_attack(model, images, labels, correct, args)
    except ThreatModelViolation as e:
        fail(f"attack bug, evaluation stopped: {e}", status=1)
    report["masking_checks"] = masking_checks(report["threat_models"], broken_by_table, report["sanity"], n)
    report["complete"] = True
    write_json(report, json_path)
    print(format_checks(report["masking_checks"]), f"\nAll figures: {json_path}", sep="\n")


if __name__ == "__main__":
    main()
