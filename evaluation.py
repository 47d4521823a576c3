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
reported. Each attack of each table draws its randomness from its own stream, seeded from (seed, norm,
epsilon, attack), so that its result does not depend on which other attacks or tables were selected.
"""
import hashlib
import json
import math
import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from attacks import ATTACKS
from attacks.common import NORMS, flat_norm
from data import DATASETS

# --- the suite ---------------------------------------------------------------------------------------------

# A column of a table: (label, registry name, options). Step sizes are relative to epsilon, as in foolbox,
# which produced the reference numbers.
FGSM = ("FGSM", "fgsm", {})
SLIDE = ("SLIDE", "slide", {"steps": 50, "rel_stepsize": 0.05})
CW = ("C&W", "cw-l2", {"binary_search_steps": 9, "steps": 1000, "stepsize": 0.01, "confidence": 0,
                       "initial_const": 1e-3})


def pgd(norm, steps, rel_stepsize):
    return (f"PGD-{steps}", f"pgd-{norm}", {"steps": steps, "rel_stepsize": rel_stepsize})


def deepfool(norm):
    return ("DeepFool", f"deepfool-{norm}", {"steps": 50, "candidates": 10, "overshoot": 0.02})


def autoattack(norm):
    return ("AA", f"aa-{norm}", {"version": "standard"})


def suite(linf_epsilons, linf_pgds, l2_epsilon, l2_pgd, l1_epsilon):
    """The reference's tables, which differ between data-set families only in their epsilons and PGDs."""
    return {
        "linf": {"epsilons": linf_epsilons, "attacks": [FGSM, *linf_pgds, deepfool("linf"), autoattack("linf")]},
        "l2": {"epsilons": [l2_epsilon], "attacks": [l2_pgd, deepfool("l2"), CW, autoattack("l2")]},
        "l1": {"epsilons": [l1_epsilon], "attacks": [pgd("l1", 50, 0.05), SLIDE, autoattack("l1")]},
    }


# family -> norm -> epsilons (written as the tables print them) and attacks.
SUITES = {
    "cifar": suite(["8/255", "16/255"], [pgd("linf", 10, 0.25), pgd("linf", 40, 0.1)],
                   "0.5", pgd("l2", 50, 0.1), "12"),
    "mnist": suite(["0.3"], [pgd("linf", 50, 1 / 30), pgd("linf", 100, 1 / 30)],
                   "2", pgd("l2", 100, 0.05), "10"),
}

FAMILY_SHAPES = {"cifar": (3, 32, 32), "mnist": (1, 28, 28)}  # C x H x W of every data set of the family
AA_VERSIONS = ("standard", "plus", "rand")  # pyautoattack's own; rand is for randomised defences

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
# An ε sweep should fall at least as low as moving every sample to the uniform grey image would (where
# grey is within ε); more than this above that bound, the attack is weaker than a constant image.
SWEEP_GREY_SLACK = 0.01
# A model giving one class to more than this share of the samples is a constant predictor (a quick trial
# that learnt nothing): its "robustness" is the share of that class.
CONSTANT_PREDICTOR_SHARE = 0.9

TOLERANCE = 1e-5  # float32 slack, absolute and relative, when checking that x_adv is in the threat model

# Default batch sizes: on CPU small enough that a progress bar moves every few seconds even under C&W on
# the MNIST net (about 2.3 images/s on 2 cores, README's Speed section); on CUDA what free memory allows
# at a generous 16 MiB per image (activations of a forward and an input backward), capped where larger
# batches stop paying off.
CPU_BATCH_SIZE = 16
CUDA_BYTES_PER_IMAGE = 16 * 2 ** 20
CUDA_BATCH_SIZE_RANGE = (50, 1000)

NORM_SYMBOLS = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}
SEVERITIES = 5  # CIFAR-10-C / CIFAR-100-C: severities 1..5, one block of images each, in that order


def cli_name(label):
    """--attacks name of a column: its label in lowercase ("C&W" -> "cw")."""
    return label.lower().replace("&", "")


def attack_names(family=None):
    """The --attacks names of one family's suite (or of all)."""
    families = [family] if family else list(SUITES)
    return sorted({cli_name(a[0]) for f in families for norm in SUITES[f].values() for a in norm["attacks"]})


def parse_number(text):
    """A number or a fraction such as 8/255."""
    numerator, _, denominator = str(text).partition("/")
    try:
        return float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number or fraction: {text}") from None


def parse_epsilon(text):
    """A positive, finite number, or a fraction such as 8/255."""
    value = parse_number(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"epsilon must be a positive number, not {text}")
    return value


def parse_sweep(text):
    """[(label, epsilon)] from "START:STOP:COUNT" (COUNT evenly spaced values, ends included) or a comma
    list "0,4/255,8/255". Epsilons must be finite, at least 0, strictly increasing, two or more."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"sweep {text!r}: write START:STOP:COUNT, e.g. 0:16/255:9")
        start, stop = parse_number(parts[0]), parse_number(parts[1])
        try:
            count = int(parts[2])
        except ValueError:
            raise ValueError(f"sweep {text!r}: COUNT must be an integer, not {parts[2]!r}") from None
        if count < 2:
            raise ValueError(f"sweep {text!r}: COUNT must be at least 2")
        values = [start + (stop - start) * i / (count - 1) for i in range(count)]
        _, _, denominator = parts[1].partition("/")  # 0:16/255:9 -> labels 0/255, 2/255, ... 16/255
        labels = ([f"{v * float(denominator):.4g}/{denominator}" for v in values] if denominator
                  else [f"{v:.4g}" for v in values])
    else:
        labels = [part.strip() for part in text.split(",") if part.strip()]
        values = [parse_number(label) for label in labels]
    if len(values) < 2:
        raise ValueError(f"sweep {text!r}: needs at least two epsilons")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"sweep {text!r}: epsilons must be finite and at least 0")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sweep {text!r}: epsilons must be strictly increasing")
    return list(zip(labels, values))


def is_one_step(name):
    return name == "fgsm"


def is_pgd(name):
    return name.startswith("pgd-")


def is_autoattack(name):
    return name.startswith("aa-")


def with_aa_version(attacks, aa_version):
    return [(label, name, {**options, "version": aa_version} if is_autoattack(name) else options)
            for label, name, options in attacks]


def run_order(attacks):
    """Order for --worst-case-only: PGD, then FGSM, then the rest in table order, AutoAttack last. Each
    attack then sees only what the earlier ones left, so FGSM's new breaks are exactly those no PGD made,
    and AutoAttack's those no other attack made: the masking checks read the same in both modes."""
    def rank(attack):
        name = attack[1]
        return 0 if is_pgd(name) else 1 if is_one_step(name) else 3 if is_autoattack(name) else 2
    return sorted(attacks, key=rank)  # stable: table order within each rank


def plan_threat_models(family, norms=None, attack_names=None, epsilons=None, aa_version="standard",
                       white_box_only=False):
    """[(norm, epsilon label, epsilon, attacks)] of the family's suite, narrowed by the selection.
    white_box_only drops AutoAttack (for transfer attacks). Raises ValueError for a selection that names
    something the suite does not have."""
    if aa_version not in AA_VERSIONS:
        raise ValueError(f"aa_version must be one of {', '.join(AA_VERSIONS)}, not {aa_version!r}")
    if white_box_only and attack_names and "aa" in attack_names:
        raise ValueError("aa: AutoAttack is not offered as a transfer attack (its black-box Square would "
                         "query the source, not the target); choose white-box attacks")
    unknown_norms = sorted(set(norms or ()) - set(NORMS))
    if unknown_norms:
        raise ValueError(f"unknown norm {', '.join(unknown_norms)} (choose from {', '.join(NORMS)})")
    family_suite = SUITES[family]
    norms = [norm for norm in NORMS if norm in (norms or NORMS)]
    labels = [str(e) for e in epsilons] if epsilons else None
    for label in labels or ():
        parse_epsilon(label)
    plan, used = [], set()
    for norm in norms:
        attacks = [a for a in family_suite[norm]["attacks"]
                   if (attack_names is None or cli_name(a[0]) in attack_names)
                   and not (white_box_only and is_autoattack(a[1]))]
        used.update(cli_name(a[0]) for a in attacks)
        for label in labels or family_suite[norm]["epsilons"]:
            if attacks:
                plan.append((norm, label, parse_epsilon(label), with_aa_version(attacks, aa_version)))
    unknown = sorted(set(attack_names or ()) - used)
    if unknown:
        offered = sorted({cli_name(a[0]) for norm in norms for a in family_suite[norm]["attacks"]})
        raise ValueError(f"{', '.join(unknown)}: not in the {family} suite for {' '.join(norms)} "
                         f"(it has {', '.join(offered)})")
    return plan


def plan_sweep(family, norm, attack_names=None, aa_version="standard"):
    """The attacks of an ε sweep: the selected columns of the norm's suite, by default its PGDs."""
    if norm not in NORMS:
        raise ValueError(f"sweep norm must be one of {', '.join(NORMS)}, not {norm!r}")
    columns = SUITES[family][norm]["attacks"]
    if attack_names is None:
        attacks = [a for a in columns if is_pgd(a[1])]
    else:
        attacks = [a for a in columns if cli_name(a[0]) in attack_names]
        unknown = sorted(set(attack_names) - {cli_name(a[0]) for a in attacks})
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not in the {family} suite for {norm} "
                             f"(it has {', '.join(cli_name(a[0]) for a in columns)})")
    return with_aa_version(attacks, aa_version)


def suite_summary():
    """One line per family and threat model: what --help prints."""
    lines = []
    for family, family_suite in SUITES.items():
        members = ", ".join(n for n, spec in DATASETS.items() if spec.family == family)
        lines.append(f"{family} ({members}):")
        for norm, table in family_suite.items():
            lines.append(f"  {norm} {' '.join(table['epsilons'])}: "
                         f"{', '.join(cli_name(label) for label, _, _ in table['attacks'])}")
    return "\n".join(lines)


def epsilon_warnings(norm_epsilons, shape):
    """Warnings for epsilons that exceed what images allow: every pair of images in [0, 1]^d lies within 1
    (linf), sqrt(d) (l2) and d (l1) of each other, so a larger ball holds every image."""
    d = math.prod(shape)
    diameter = {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}
    warnings = []
    for norm, label, epsilon in norm_epsilons:
        if epsilon >= diameter[norm]:
            warnings.append(f"{norm} epsilon {label} is at least the image diameter ({diameter[norm]:.4g} for "
                            f"{'x'.join(map(str, shape))} images in [0, 1]): its ball holds every image, so "
                            f"no model can be robust there")
    return warnings


# --- random streams, devices, inputs -----------------------------------------------------------------------

def stream_seed(seed, norm, epsilon, label):
    """A seed for one attack of one table, from (seed, norm, epsilon, attack) alone. The epsilon's value
    (not its written form) counts, so 8/255 and 0.0313725... share a stream."""
    key = f"{seed}|{norm}|{float(epsilon)!r}|{label}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % 2 ** 63


@contextmanager
def random_stream(seed, device):
    """torch's global generators seeded with `seed`, and restored afterwards: attacks draw from them."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def device_of(model):
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def default_batch_size(device):
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        low, high = CUDA_BATCH_SIZE_RANGE
        return int(min(high, max(low, free // CUDA_BYTES_PER_IMAGE)))
    return CPU_BATCH_SIZE


def check_inputs(images, labels, dataset):
    """Images N x C x H x W of the data set's family (uint8, or float in [0, 1]) and N integer labels in
    range; raises ValueError with one sentence otherwise."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    spec = DATASETS[dataset]
    shape = FAMILY_SHAPES[spec.family]
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("images and labels must be torch tensors")
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must be N x {' x '.join(map(str, shape))} for {dataset}, "
                         f"not {' x '.join(map(str, images.shape))}")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be a vector of {len(images)} class indices, one per image, "
                         f"not of shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, not {labels.dtype}")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise ValueError(f"labels must lie in 0..{spec.num_classes - 1} for {dataset}")
    if images.dtype != torch.uint8:
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be uint8 or float in [0, 1], not {images.dtype}")
        if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError("float images must lie in [0, 1] (the model normalises them itself)")


def as_float(images):
    """Float images in [0, 1], whether stored as uint8 or float."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def clean_predictions(model, images, batch_size):
    """The model's class for each image (on the CPU): computed once, shared by every attack."""
    predicted = []
    with torch.no_grad():
        for begin in range(0, len(images), batch_size):
            predicted.append(model(as_float(images[begin:begin + batch_size])).argmax(1).cpu())
    return torch.cat(predicted)


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
               progress=False, judge=None):
    """Attack the samples at `indices` in batches. Returns (broken: bool over indices, summed l-inf, l2 and
    l1 sizes of the successful perturbations, seconds). The attack works on `model`; `judge` (default:
    the same model) decides which adversarial examples fool it, as in a transfer attack. robust_share
    (the share of all samples that `indices` makes up) turns the bar's running survival rate into an
    estimate of the final accuracy."""
    judge = judge or model
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
            fooled = judge(x_adv).argmax(1) != y
        delta = (x_adv - x)[fooled]
        for size_norm in NORMS:
            size_sums[size_norm] += flat_norm(delta.double(), size_norm).sum().item()
        broken[begin:begin + len(index)] = fooled.cpu()  # .cpu() waits for the device: timing is honest
        done = begin + len(index)
        bar.update(len(index))
        bar.set_postfix(robust=f"{100 * robust_share * (1 - broken[:done].float().mean().item()):.2f}%")
    bar.close()
    return broken, size_sums, time.perf_counter() - start


def build_attack(name, epsilon, options, seed):
    """The registry's attack; AutoAttack seeds its own generators, so it gets the stream's seed."""
    return ATTACKS[name](epsilon, **options, **({"seed": seed} if is_autoattack(name) else {}))


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


def evaluate_threat_model(model, norm, epsilon_label, epsilon, attacks, images, labels, correct, *, seed=0,
                          batch_size=CPU_BATCH_SIZE, worst_case_only=False, progress=False, judge=None):
    """Every attack of one table. Returns (the table's record, {label: bool mask of the samples that
    attack broke}). Under worst_case_only the masks are disjoint, each attack's new breaks only. With a
    judge, attacks are made on `model` and judged on `judge` (transfer)."""
    n = len(labels)
    robust = correct.clone()  # the worst case so far
    broken_by, records = {}, {}
    for label, name, options in (run_order(attacks) if worst_case_only else attacks):
        own_seed = stream_seed(seed, norm, epsilon, label)
        attack = build_attack(name, epsilon, options, own_seed)
        indices = (robust if worst_case_only else correct).nonzero().flatten()
        with random_stream(own_seed, images.device):
            broken, size_sums, seconds = run_attack(
                model, attack, label, norm, epsilon, images, labels, indices.to(images.device), batch_size,
                robust_share=len(indices) / n, progress=progress, judge=judge)
        broken_by[label] = torch.zeros(n, dtype=torch.bool)
        broken_by[label][indices] = broken
        robust &= ~broken_by[label]
        records[label] = attack_record(label, name, options, len(indices), broken, size_sums, seconds, n,
                                       own_accuracy=not worst_case_only)
    table = {
        "norm": norm, "epsilon": epsilon, "epsilon_label": epsilon_label,
        "attacks": [records[label] for label, _, _ in attacks],
        "run_order": list(records),
        "worst_case": {"robust": int(robust.sum()), "robust_accuracy": int(robust.sum()) / n},
    }
    return table, broken_by


def grey_image_class(model, images):
    """The class the model gives the uniform grey image, which lies within linf 0.5 of every image."""
    with torch.no_grad():
        return model(torch.full_like(as_float(images[:1]), 0.5)).argmax(1).item()


def run_sanity_attack(model, images, labels, correct, *, seed=0, batch_size=CPU_BATCH_SIZE, progress=False):
    """PGD at linf 0.5, and the accuracy that the uniform grey image alone leaves: an upper bound on the
    true robust accuracy there, since grey lies within 0.5 of every image."""
    epsilon = parse_epsilon(SANITY["epsilon"])
    grey_class = grey_image_class(model, images)
    grey_survivors = correct & (labels.cpu() == grey_class)
    own_seed = stream_seed(seed, SANITY["norm"], epsilon, f"sanity {SANITY['label']}")
    attack = ATTACKS[SANITY["attack"]](epsilon, **SANITY["options"])
    indices = correct.nonzero().flatten()
    with random_stream(own_seed, images.device):
        broken, size_sums, seconds = run_attack(
            model, attack, f"sanity {SANITY['label']}", SANITY["norm"], epsilon, images, labels,
            indices.to(images.device), batch_size, robust_share=len(indices) / len(labels), progress=progress)
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
        pgds = [label for label, name in names.items() if is_pgd(name)]
        autoattacks = [label for label, name in names.items() if is_autoattack(name)]
        white_box = [label for label in names if label not in autoattacks]
        if one_step:
            checks.append(_share_check(
                "fgsm-beats-pgd", table, one_step, pgds, broken_by, n, FGSM_ONLY_MAX,
                "a one-step attack beating its multi-step versions"))
        if autoattacks:
            checks.append(_share_check(
                "autoattack-beats-white-box", table, autoattacks, white_box, broken_by, n, AA_ONLY_MAX,
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
    if sanity is not None:
        accuracy, grey = sanity["robust_accuracy"], sanity["grey_image_accuracy"]
        checks.append({
            "check": "large-epsilon-sanity", "norm": sanity["norm"], "epsilon": sanity["epsilon"],
            "where": f"{NORM_SYMBOLS[sanity['norm']]} {sanity['epsilon_label']}",
            "value": accuracy, "threshold": SANITY["max_accuracy"],
            "flagged": accuracy > SANITY["max_accuracy"] and accuracy > grey,
            "rule": f"flag above {_percent(SANITY['max_accuracy'])} accuracy unless the grey image leaves as much",
            "message": f"{sanity['label']} leaves {_percent(accuracy)} accuracy; a uniform grey image, within "
                       f"reach of every sample, leaves {_percent(grey)}"})
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


def constant_predictor_check(class_counts):
    """Flag a model that gives one class to most samples: every accuracy it gets is that class's share.
    class_counts: how many samples it gives each class (torch.bincount of its predictions)."""
    top = int(class_counts.argmax())
    share = class_counts[top].item() / int(class_counts.sum())
    return {"check": "constant-predictor", "norm": None, "epsilon": None, "where": "clean predictions",
            "value": share, "threshold": CONSTANT_PREDICTOR_SHARE, "flagged": share > CONSTANT_PREDICTOR_SHARE,
            "rule": f"flag when one class gets more than {_percent(CONSTANT_PREDICTOR_SHARE)} of the samples",
            "message": f"the model predicts class {top} for {_percent(share)} of the samples"
                       + (": it has learnt (almost) nothing, and its accuracies are that class's share"
                          if share > CONSTANT_PREDICTOR_SHARE else "")}


def sweep_checks(sweep, n):
    """Per attack of an ε sweep: accuracy must not rise with ε, and must not stay above what moving every
    sample to the grey image (where it lies within ε) leaves."""
    checks = []
    epsilons, labels, bound = sweep["epsilons"], sweep["epsilon_labels"], sweep["grey_image_bound"]
    symbol = NORM_SYMBOLS[sweep["norm"]]
    for curve in sweep["curves"]:
        accuracy = curve["robust_accuracy"]
        rises = [(labels[i], labels[i + 1]) for i in range(len(accuracy) - 1) if accuracy[i + 1] > accuracy[i]]
        checks.append({
            "check": "sweep-accuracy-rises", "norm": sweep["norm"], "epsilon": None,
            "where": f"{curve['label']} sweep, {symbol}", "value": len(rises), "threshold": 0,
            "flagged": bool(rises), "rule": "flag if accuracy rises from one epsilon to a larger one",
            "message": ("accuracy rises from " + ", ".join(f"{a} to {b}" for a, b in rises)) if rises
                       else "accuracy never rises with epsilon"})
        excess = [a - b for a, b in zip(accuracy, bound)]
        worst = max(range(len(excess)), key=lambda i: (excess[i], i))  # ties: the largest epsilon
        checks.append({
            "check": "sweep-above-grey-bound", "norm": sweep["norm"], "epsilon": epsilons[worst],
            "where": f"{curve['label']} sweep, {symbol} {labels[worst]}", "value": excess[worst],
            "threshold": SWEEP_GREY_SLACK, "flagged": excess[worst] > SWEEP_GREY_SLACK,
            "rule": f"flag more than {_percent(SWEEP_GREY_SLACK)} above the accuracy left by moving every "
                    f"sample within reach to the uniform grey image",
            "message": f"{curve['label']} leaves {_percent(accuracy[worst])} where the grey image alone leaves "
                       f"at most {_percent(bound[worst])}"})
    return checks


# --- entry points ------------------------------------------------------------------------------------------

def new_report(model_info, dataset, n, batch_size, device, seed, aa_version, selection):
    """The JSON report's skeleton: every key present from the start, filled in as results arrive."""
    return {
        "checkpoint": model_info.get("checkpoint"), "epoch": model_info.get("epoch"),
        "model": model_info.get("model"), "dataset": dataset, "num_classes": DATASETS[dataset].num_classes,
        "training_args": model_info.get("args"),
        "evaluation": {"n": n, "batch_size": batch_size, "device": str(device), "seed": seed, **selection},
        "aa_version": aa_version, "complete": False, "clean": None,
        "threat_models": [], "sanity": None, "masking_checks": None,
        "transfer": None, "sweep": None, "corruptions": None, "warnings": [],
    }


def _prepare(model, images, labels, batch_size):
    """Inputs on the model's device, the model in eval mode, the batch size chosen if not given."""
    device = device_of(model)
    model.eval()
    return images.to(device), labels.to(device).long(), device, batch_size or default_batch_size(device)


def _clean(report, model, images, labels, batch_size):
    predicted = clean_predictions(model, images, batch_size)
    correct = predicted == labels.cpu()
    report["clean"] = {"correct": int(correct.sum()), "accuracy": int(correct.sum()) / len(labels)}
    return predicted, correct


def _notify(on_progress, report, finished):
    if on_progress is not None:
        on_progress(report, finished)


def evaluate(model, images, labels, dataset="cifar10", norms=None, attacks=None, epsilons=None, *,
             aa_version="standard", seed=0, batch_size=None, worst_case_only=False, progress=False,
             model_info=None, on_progress=None):
    """Robust accuracy of `model` (any nn.Module mapping [0, 1] images to logits) under the data set's
    suite: a table per (norm, epsilon) with each attack's accuracy and the per-sample worst case, the
    large-epsilon sanity attack and the masking checks. norms/attacks (--attacks names)/epsilons narrow
    the suite (None: all of it). images: N x C x H x W, uint8 or float in [0, 1]. model_info (model, epoch,
    args, checkpoint) goes into the report. on_progress(report, finished) is called once the clean accuracy
    is known (finished None) and after each table. Returns the report; raises ValueError for bad input and
    ThreatModelViolation for an attack that leaves its threat model."""
    check_inputs(images, labels, dataset)
    family = DATASETS[dataset].family
    plan = plan_threat_models(family, norms, attacks, epsilons, aa_version)
    images, labels, device, batch_size = _prepare(model, images, labels, batch_size)
    report = new_report(model_info or {"model": type(model).__name__}, dataset, len(labels), batch_size, device,
                        seed, aa_version, {"worst_case_only": worst_case_only, "norms": norms,
                                           "attacks": attacks, "epsilons": epsilons})
    report["warnings"] += epsilon_warnings([(norm, label, eps) for norm, label, eps, _ in plan],
                                           FAMILY_SHAPES[family])
    predicted, correct = _clean(report, model, images, labels, batch_size)
    _notify(on_progress, report, None)
    broken_by_table = []
    for norm, epsilon_label, epsilon, table_attacks in plan:
        table, broken_by = evaluate_threat_model(
            model, norm, epsilon_label, epsilon, table_attacks, images, labels, correct, seed=seed,
            batch_size=batch_size, worst_case_only=worst_case_only, progress=progress)
        report["threat_models"].append(table)
        broken_by_table.append(broken_by)
        _notify(on_progress, report, table)
    report["sanity"] = run_sanity_attack(model, images, labels, correct, seed=seed, batch_size=batch_size,
                                         progress=progress)
    report["masking_checks"] = [constant_predictor_check(torch.bincount(predicted, minlength=DATASETS[dataset].num_classes)),
                                *masking_checks(report["threat_models"], broken_by_table, report["sanity"],
                                                len(labels))]
    report["complete"] = True
    return report


def evaluate_transfer(source, target, images, labels, dataset="cifar10", norms=None, attacks=None,
                      epsilons=None, *, seed=0, batch_size=None, worst_case_only=False, progress=False,
                      source_info=None, target_info=None, on_progress=None):
    """Transfer attacks: adversarial examples made on `source` with the suite's white-box attacks, accuracy
    measured on `target` (both on the same device). Only samples the target classifies correctly are
    attacked. Returns the report, its tables under report["transfer"]["threat_models"]."""
    check_inputs(images, labels, dataset)
    family = DATASETS[dataset].family
    plan = plan_threat_models(family, norms, attacks, epsilons, white_box_only=True)
    images, labels, device, batch_size = _prepare(target, images, labels, batch_size)
    source = source.to(device).eval()
    source_info = source_info or {"model": type(source).__name__}
    report = new_report(target_info or {"model": type(target).__name__}, dataset, len(labels), batch_size,
                        device, seed, None, {"worst_case_only": worst_case_only, "norms": norms,
                                             "attacks": attacks, "epsilons": epsilons})
    report["warnings"] += epsilon_warnings([(norm, label, eps) for norm, label, eps, _ in plan],
                                           FAMILY_SHAPES[family])
    predicted, correct = _clean(report, target, images, labels, batch_size)
    source_correct = clean_predictions(source, images, batch_size) == labels.cpu()
    report["transfer"] = {
        "source": {"checkpoint": source_info.get("checkpoint"), "model": source_info.get("model"),
                   "epoch": source_info.get("epoch"), "clean_accuracy": int(source_correct.sum()) / len(labels)},
        "target": {"checkpoint": report["checkpoint"], "model": report["model"], "epoch": report["epoch"],
                   "clean_accuracy": report["clean"]["accuracy"]},
        "threat_models": []}
    _notify(on_progress, report, None)
    for norm, epsilon_label, epsilon, table_attacks in plan:
        table, _ = evaluate_threat_model(
            source, norm, epsilon_label, epsilon, table_attacks, images, labels, correct, seed=seed,
            batch_size=batch_size, worst_case_only=worst_case_only, progress=progress, judge=target)
        report["transfer"]["threat_models"].append(table)
        _notify(on_progress, report, table)
    report["masking_checks"] = [constant_predictor_check(torch.bincount(predicted, minlength=DATASETS[dataset].num_classes))]
    report["complete"] = True
    return report


def grey_image_bound(model, images, labels, correct, norm, epsilons, batch_size):
    """Per epsilon, the accuracy left if every sample within epsilon of the uniform grey image were moved
    there: an upper bound on the true robust accuracy (the grey image is a valid adversarial example)."""
    grey_class = grey_image_class(model, images)
    distance = torch.cat([flat_norm(as_float(images[b:b + batch_size]) - 0.5, norm).cpu()
                          for b in range(0, len(images), batch_size)])
    keeps = correct & (labels.cpu() == grey_class)
    return [int((correct & ((distance > eps) | keeps)).sum()) / len(labels) for eps in epsilons]


def evaluate_sweep(model, images, labels, dataset="cifar10", norm="linf", epsilons=(), attacks=None, *,
                   aa_version="standard", seed=0, batch_size=None, progress=False, model_info=None,
                   on_progress=None):
    """Robust accuracy at each epsilon of `epsilons` ([(label, value)], increasing, see parse_sweep) under
    each selected attack of the norm's suite (default: its PGDs). At epsilon 0 the accuracy is the clean
    accuracy. Returns the report, the curves under report["sweep"], its checks in masking_checks."""
    check_inputs(images, labels, dataset)
    family = DATASETS[dataset].family
    sweep_attacks = plan_sweep(family, norm, attacks, aa_version)
    epsilons = list(epsilons)
    if len(epsilons) < 2 or any(b[1] <= a[1] for a, b in zip(epsilons, epsilons[1:])) or epsilons[0][1] < 0:
        raise ValueError("a sweep needs at least two epsilons, at least 0 and strictly increasing")
    images, labels, device, batch_size = _prepare(model, images, labels, batch_size)
    n = len(labels)
    report = new_report(model_info or {"model": type(model).__name__}, dataset, n, batch_size, device, seed,
                        aa_version, {"worst_case_only": False, "norms": [norm], "attacks": attacks,
                                     "epsilons": [label for label, _ in epsilons]})
    report["warnings"] += epsilon_warnings([(norm, label, eps) for label, eps in epsilons[-1:]],
                                           FAMILY_SHAPES[family])
    predicted, correct = _clean(report, model, images, labels, batch_size)
    values = [eps for _, eps in epsilons]
    report["sweep"] = {
        "norm": norm, "epsilons": values, "epsilon_labels": [label for label, _ in epsilons],
        "clean_accuracy": report["clean"]["accuracy"],
        "grey_image_bound": grey_image_bound(model, images, labels, correct, norm, values, batch_size),
        "curves": [{"label": label, "name": cli_name(label), "attack": name, "options": options,
                    "robust_accuracy": [], "seconds": []} for label, name, options in sweep_attacks],
        "plot": None}
    _notify(on_progress, report, None)
    indices = correct.nonzero().flatten()
    for curve in report["sweep"]["curves"]:
        for epsilon in values:
            if epsilon == 0:  # the ball is the image itself
                curve["robust_accuracy"].append(report["clean"]["accuracy"])
                curve["seconds"].append(0.0)
                continue
            own_seed = stream_seed(seed, norm, epsilon, curve["label"])
            attack = build_attack(curve["attack"], epsilon, curve["options"], own_seed)
            with random_stream(own_seed, device):
                broken, _, seconds = run_attack(model, attack, curve["label"], norm, epsilon, images, labels,
                                                indices.to(device), batch_size, robust_share=len(indices) / n,
                                                progress=progress)
            curve["robust_accuracy"].append((len(indices) - int(broken.sum())) / n)
            curve["seconds"].append(seconds)
        _notify(on_progress, report, curve)
    report["masking_checks"] = [constant_predictor_check(torch.bincount(predicted, minlength=DATASETS[dataset].num_classes)),
                                *sweep_checks(report["sweep"], n)]
    report["complete"] = True
    return report


# --- corruptions (CIFAR-10-C / CIFAR-100-C) ----------------------------------------------------------------

def _load_npy(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npy file ({str(e).splitlines()[0] if str(e) else 'empty'})") \
            from None


def load_corruptions(folder, dataset, n=None):
    """{corruption: uint8 images 5 x m x C x H x W}, labels 5 x m, from a folder laid out as Hendrycks &
    Dietterich (2019) publish CIFAR-10-C / CIFAR-100-C: <corruption>.npy of (5 * M) x H x W x C uint8
    images, severity 1 first, and labels.npy of 5 * M labels. n keeps the first n images of each severity.
    Raises ValueError naming the file for anything else."""
    spec = DATASETS[dataset]
    if not os.path.isdir(folder):
        raise ValueError(f"--corruptions {folder}: no such folder")
    labels_path = os.path.join(folder, "labels.npy")
    if not os.path.isfile(labels_path):
        raise ValueError(f"{folder} has no labels.npy (CIFAR-10-C / CIFAR-100-C ship one beside the images)")
    labels = _load_npy(labels_path)
    if labels.ndim != 1 or len(labels) == 0 or len(labels) % SEVERITIES or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path} must hold {SEVERITIES} x M integer labels, not {labels.dtype} of "
                         f"shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise ValueError(f"{labels_path} has labels outside 0..{spec.num_classes - 1} ({dataset})")
    names = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".npy") and f != "labels.npy")
    if not names:
        raise ValueError(f"{folder} holds no <corruption>.npy files beside labels.npy")
    per_severity = len(labels) // SEVERITIES
    keep = min(n or per_severity, per_severity)
    c, h, w = FAMILY_SHAPES[spec.family]
    corruptions = {}
    for name in names:
        path = os.path.join(folder, f"{name}.npy")
        images = _load_npy(path)
        if images.shape != (len(labels), h, w, c) or images.dtype != np.uint8:
            raise ValueError(f"{path} must hold {len(labels)} x {h} x {w} x {c} uint8 images (as labels.npy "
                             f"has {len(labels)} labels), not {images.dtype} of shape {images.shape}")
        blocks = [np.asarray(images[s * per_severity:s * per_severity + keep]) for s in range(SEVERITIES)]
        corruptions[name] = torch.as_tensor(np.stack(blocks)).permute(0, 1, 4, 2, 3).contiguous()
    labels = np.stack([np.asarray(labels[s * per_severity:s * per_severity + keep]) for s in range(SEVERITIES)])
    return corruptions, torch.as_tensor(labels.astype(np.int64)), per_severity


def evaluate_corruptions(model, folder, dataset="cifar10", n=None, *, batch_size=None, progress=False,
                         model_info=None):
    """Accuracy per corruption and severity, and the means, on a CIFAR-10-C / CIFAR-100-C folder (see
    load_corruptions). Returns the report, the figures under report["corruptions"]."""
    corruptions, labels, per_severity = load_corruptions(folder, dataset, n)
    device = device_of(model)
    batch_size = batch_size or default_batch_size(device)
    model.eval()
    report = new_report(model_info or {"model": type(model).__name__}, dataset, labels.shape[1], batch_size,
                        device, None, None, {"worst_case_only": False, "norms": None, "attacks": None,
                                             "epsilons": None})
    rows = []
    for name, images in tqdm(corruptions.items(), desc="corruptions", unit="corruption", disable=not progress,
                             file=sys.stderr):
        accuracy = [(clean_predictions(model, images[s].to(device), batch_size) == labels[s]).float().mean().item()
                    for s in range(SEVERITIES)]
        rows.append({"corruption": name, "accuracy": accuracy, "mean": sum(accuracy) / SEVERITIES})
    severity_means = [sum(r["accuracy"][s] for r in rows) / len(rows) for s in range(SEVERITIES)]
    report["corruptions"] = {
        "folder": folder, "images_per_severity": labels.shape[1], "available_per_severity": per_severity,
        "per_corruption": rows, "severity_means": severity_means, "mean": sum(severity_means) / SEVERITIES}
    report["masking_checks"] = []
    report["complete"] = True
    return report


# --- output ------------------------------------------------------------------------------------------------

def _percent(fraction):
    return f"{100 * fraction:.2f}%"


def _cell(value):
    if value is None:
        return "?"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _column(record):
    """A column's header: AutoAttack's says which version ran when it is not the standard one."""
    version = record["options"].get("version", "standard") if is_autoattack(record["attack"]) else "standard"
    return record["label"] if version == "standard" else f"{record['label']}-{version}"


def _accuracy_cells(table, clean_accuracy):
    return [f"{100 * clean_accuracy:.2f}",
            *("–" if a["robust_accuracy"] is None else f"{100 * a['robust_accuracy']:.2f}" for a in table["attacks"]),
            f"{100 * table['worst_case']['robust_accuracy']:.2f}"]


def _markdown(header, row):
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, [":-:"] * len(header), row))


def format_table(table, report):
    """The reference README's columns plus the worst case; one row, for this model."""
    training = report.get("training_args") or {}
    header = [NORM_SYMBOLS[table["norm"]], "leverage", "Net", "LP", "Nat(%)", *map(_column, table["attacks"]),
              "Worst"]
    row = [table["epsilon_label"], _cell(training.get("leverage")), report.get("model") or "?",
           _cell(training.get("learning_policy")), *_accuracy_cells(table, report["clean"]["accuracy"])]
    return _markdown(header, row)


def format_transfer_table(table, report):
    """Made on the source, measured on the target: both named, with their clean accuracies; the attacks'
    figures are the target's."""
    source, target = report["transfer"]["source"], report["transfer"]["target"]
    def name(side):
        return f"{side['model']} ({side['checkpoint']})" if side.get("checkpoint") else str(side["model"])
    header = [NORM_SYMBOLS[table["norm"]], "Source", "Target", "Source Nat(%)", "Nat(%)",
              *map(_column, table["attacks"]), "Worst"]
    row = [table["epsilon_label"], name(source), name(target), f"{100 * source['clean_accuracy']:.2f}",
           *_accuracy_cells(table, target["clean_accuracy"])]
    return _markdown(header, row)


def format_details(table):
    """Per attack, in the order they ran: accuracy, samples attacked and broken, mean size of the successful
    perturbations, seconds."""
    records = sorted(table["attacks"], key=lambda a: table["run_order"].index(a["label"]))
    lines = ["| attack | robust(%) | attacked | broken | mean ℓ∞ | mean ℓ2 | mean ℓ1 | seconds |",
             "| :-- | --: | --: | --: | --: | --: | --: | --: |"]
    for r in records:
        sizes = r["mean_perturbation"] or dict.fromkeys(NORMS)
        accuracy = "–" if r["robust_accuracy"] is None else f"{100 * r['robust_accuracy']:.2f}"
        lines.append(f"| {_column(r)} | {accuracy} | {r['attacked']} | {r['broken']} | "
                     + " | ".join("–" if sizes[k] is None else f"{sizes[k]:.4g}" for k in NORMS)
                     + f" | {r['seconds']:.1f} |")
    return "\n".join(lines)


def format_sweep(sweep):
    labels = sweep["epsilon_labels"]
    header = [f"{NORM_SYMBOLS[sweep['norm']]} ε", *labels]
    rows = [[c["label"], *(f"{100 * a:.2f}" for a in c["robust_accuracy"])] for c in sweep["curves"]]
    rows.append(["grey-image bound", *(f"{100 * b:.2f}" for b in sweep["grey_image_bound"])])
    return "\n".join("| " + " | ".join(cells) + " |"
                     for cells in (header, [":--", *["--:"] * len(labels)], *rows))


def format_corruptions(corruptions):
    header = ["corruption", *(f"severity {s + 1}" for s in range(SEVERITIES)), "mean"]
    rows = [[r["corruption"], *(f"{100 * a:.2f}" for a in r["accuracy"]), f"{100 * r['mean']:.2f}"]
            for r in corruptions["per_corruption"]]
    rows.append(["**mean**", *(f"{100 * a:.2f}" for a in corruptions["severity_means"]),
                 f"**{100 * corruptions['mean']:.2f}**"])
    return "\n".join("| " + " | ".join(cells) + " |"
                     for cells in (header, [":--", *["--:"] * (SEVERITIES + 1)], *rows))


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


def plot_sweep(report, path):
    """Accuracy vs epsilon, one line per attack, with the clean accuracy and the grey-image bound marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["sweep"]
    symbol = NORM_SYMBOLS[sweep["norm"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for curve in sweep["curves"]:
        ax.plot(sweep["epsilons"], [100 * a for a in curve["robust_accuracy"]], marker="o", label=curve["label"])
    ax.plot(sweep["epsilons"], [100 * b for b in sweep["grey_image_bound"]], linestyle="--", color="grey",
            label="grey-image bound")
    ax.axhline(100 * sweep["clean_accuracy"], linestyle=":", color="black",
               label=f"clean {_percent(sweep['clean_accuracy'])}")
    ax.set_xlabel(f"ε ({symbol} radius, pixels scaled to [0, 1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    attacks = ", ".join(c["label"] for c in sweep["curves"])
    ax.set_title(f"{report.get('model')} on {report['dataset']}: {attacks}, {symbol} "
                 f"({report['evaluation']['n']} test images)", fontsize=9, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(report, path):
    """Write atomically: readers never see half a file. Raises OSError (the temporary file removed)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2, default=str)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
