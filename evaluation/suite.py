"""The attack suite as data: the reference's tables per data-set family, the large-epsilon sanity attack, and
the selection of what runs (norms, --attacks names, epsilons) checked against them."""
import math

from attacks.common import NORMS
from data import DATASETS
from utils import parse_number

# A column of a table: (label, registry name, options). Step sizes are relative to epsilon, as in foolbox,
# which produced the reference numbers. C&W stops searching a sample once it holds an adversarial example
# inside the epsilon ball: the accuracy at epsilon cannot change after that (README, Evaluate).
FGSM = ("FGSM", "fgsm", {})
SLIDE = ("SLIDE", "slide", {"steps": 50, "rel_stepsize": 0.05})
CW = ("C&W", "cw-l2", {"binary_search_steps": 9, "steps": 1000, "stepsize": 0.01, "confidence": 0,
                       "initial_const": 1e-3, "stop_inside_ball": True})


def pgd(norm, steps, rel_stepsize):
    return (f"PGD-{steps}", f"pgd-{norm}", {"steps": steps, "rel_stepsize": rel_stepsize})


def deepfool(norm):
    return ("DeepFool", f"deepfool-{norm}", {"steps": 50, "candidates": 10, "overshoot": 0.02})


def autoattack(norm):
    return ("AA", f"aa-{norm}", {"version": "standard"})


def suite(linf_epsilons, linf_pgds, l2_epsilon, l2_pgd, l1_epsilon, linf_on_request=()):
    """The reference's tables, which differ between data-set families only in their epsilons and PGDs.
    linf_on_request: ℓ∞ columns that run only where --attacks names them (never by default)."""
    return {
        "linf": {"epsilons": linf_epsilons, "attacks": [FGSM, *linf_pgds, deepfool("linf"), autoattack("linf")],
                 "on_request": list(linf_on_request)},
        "l2": {"epsilons": [l2_epsilon], "attacks": [l2_pgd, deepfool("l2"), CW, autoattack("l2")]},
        "l1": {"epsilons": [l1_epsilon], "attacks": [pgd("l1", 50, 0.05), SLIDE, autoattack("l1")]},
    }


# family -> norm -> epsilons (written as the tables print them) and attacks.
SUITES = {
    "cifar": suite(["8/255", "16/255"], [pgd("linf", 10, 0.25), pgd("linf", 40, 0.1)],
                   "0.5", pgd("l2", 50, 0.1), "12"),
    "mnist": suite(["0.3"], [pgd("linf", 50, 1 / 30), pgd("linf", 100, 1 / 30)],
                   "2", pgd("l2", 100, 0.05), "10",
                   # PGD-40 at step 0.01 (1/30 of 0.3) from one random start: the baseline attack of Mosbach
                   # et al.'s logit-pairing table (reproduce.py mosbach-mnist) and the training attack of
                   # the ALP paper's MNIST models. Not in the reference's table: run only when named.
                   linf_on_request=[pgd("linf", 40, 1 / 30)]),
}

AA_VERSIONS = ("standard", "plus", "rand")  # pyautoattack's own; rand is for randomised defences
NORM_SYMBOLS = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}

# Run by default for every data set: at linf 0.5 any image can be turned into uniform grey, so a model
# cannot truly be robust on more than the samples of the class it gives the grey image (~10% with 10
# balanced classes). PGD leaving more than that means it cannot follow the gradient: masking. (A model that
# predicts one class everywhere keeps exactly that class's share: it is useless, not masked.)
SANITY = {"label": "PGD-20", "attack": "pgd-linf", "norm": "linf", "epsilon": "0.5",
          "options": {"steps": 20, "rel_stepsize": 0.1}, "max_accuracy": 0.10}


def columns_of(table, named=False):
    """The columns of one threat model's suite: those run by default, and with named=True (an --attacks
    selection) those run only on request too."""
    return table["attacks"] + (table.get("on_request", []) if named else [])


# AutoAttack's gradient steps (or queries) per image that resists it to the end, from pyautoattack's standard
# version: APGD-CE's 100 steps, APGD-T's and FAB-T's 100 for each of 9 target classes, Square's 5000 queries
# counted as a third of a step each (a forward pass without the backward).
AUTOATTACK_STEPS = 100 + 9 * 100 + 9 * 100 + 5000 / 3


def gradient_steps(column):
    """The gradient steps (forward + backward) an attack of eval.py's suite, (label, registry name, options),
    takes per image that resists it to the end. Attacks that stop on the samples they break (DeepFool, C&W,
    AutoAttack) take fewer on a less robust model, so an estimate from these is an upper bound."""
    _, name, options = column
    if name.startswith("aa-"):
        return AUTOATTACK_STEPS
    if name == "fgsm":
        return 1
    # DeepFool: each step the gradients of its candidate classes; C&W: its steps in each binary-search step
    return options["steps"] * options.get("candidates", 1) * options.get("binary_search_steps", 1)


def cli_name(label):
    """The name of a column in a selection (--attacks, and evaluate's attacks=): its label in lowercase
    ("C&W" -> "cw")."""
    return label.lower().replace("&", "")


def attack_names(family=None):
    """The selection names of one family's suite (or of all)."""
    families = [family] if family else list(SUITES)
    return sorted({cli_name(a[0]) for f in families for norm in SUITES[f].values()
                   for a in columns_of(norm, named=True)})


def parse_epsilon(text):
    """A positive, finite number, or a fraction such as 8/255: how the suite writes its epsilons."""
    value = parse_number(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"epsilon must be a positive number, not {text}")
    return value


def check_sweep_epsilons(values, written=None):
    """A sweep's epsilons (`written` as given, for the message): two or more, finite, at least 0 and
    strictly increasing. Raises ValueError otherwise."""
    prefix = f"sweep {written!r}" if written else "sweep"
    if len(values) < 2:
        raise ValueError(f"{prefix}: needs at least two epsilons")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{prefix}: epsilons must be finite and at least 0")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{prefix}: epsilons must be strictly increasing")


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
    requested_norms = bool(norms)
    norms = [norm for norm in NORMS if norm in (norms or NORMS)]
    labels = [str(e) for e in epsilons] if epsilons else None
    for label in labels or ():
        parse_epsilon(label)
    plan, used, empty = [], set(), []
    for norm in norms:
        attacks = [a for a in columns_of(family_suite[norm], named=attack_names is not None)
                   if (attack_names is None or cli_name(a[0]) in attack_names)
                   and not (white_box_only and is_autoattack(a[1]))]
        used.update(cli_name(a[0]) for a in attacks)
        if not attacks:
            empty.append(norm)
        for label in labels or family_suite[norm]["epsilons"]:
            if attacks:
                plan.append((norm, label, parse_epsilon(label), with_aa_version(attacks, aa_version)))
    unknown = sorted(set(attack_names or ()) - used)
    if unknown:
        offered = sorted({cli_name(a[0]) for norm in norms for a in columns_of(family_suite[norm], named=True)})
        raise ValueError(f"{', '.join(unknown)}: not in the {family} suite for {' '.join(norms)} "
                         f"(it has {', '.join(offered)})")
    # An attack name can exist at several norms (pgd-50): a requested norm that none of the named attacks
    # reaches would silently drop out of the evaluation.
    if requested_norms and empty:
        norm = empty[0]
        raise ValueError(f"{norm} gets none of the selected attacks ({', '.join(attack_names)}); the {family} "
                         f"suite has {', '.join(cli_name(a[0]) for a in columns_of(family_suite[norm], True))} "
                         f"there")
    return plan


def plan_summary(plan):
    """What a plan runs, per table, in one line: 'ℓ∞ 0.3: FGSM, PGD-50; ℓ1 10: PGD-50'."""
    return "; ".join(f"{NORM_SYMBOLS[norm]} {label}: {', '.join(a[0] for a in attacks)}"
                     for norm, label, _, attacks in plan)


def plan_sweep(family, norm, attack_names=None, aa_version="standard"):
    """The attacks of an ε sweep: the selected columns of the norm's suite, by default its PGDs."""
    if norm not in NORMS:
        raise ValueError(f"sweep norm must be one of {', '.join(NORMS)}, not {norm!r}")
    columns = columns_of(SUITES[family][norm], named=attack_names is not None)
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
            on_request = "".join(f", {cli_name(label)} (on request)" for label, _, _ in table.get("on_request", []))
            lines.append(f"  {norm} {' '.join(table['epsilons'])}: "
                         f"{', '.join(cli_name(label) for label, _, _ in table['attacks'])}{on_request}")
    return "\n".join(lines)


def image_diameter(norm, shape):
    """Every pair of images in [0, 1]^d lies within 1 (linf), sqrt(d) (l2) and d (l1) of each other."""
    d = math.prod(shape)
    return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]


def epsilon_in_0_255_units(norm, label, epsilon, shape):
    """Why an ℓ∞ or ℓ2 epsilon is refused, or None: one above the diameter of [0, 1] images was written in
    0-255 units (8 for 8/255; 76 for 0.3). ℓ1 keeps its warning (epsilon_warnings): its radii run into the
    hundreds on CIFAR, so a large one is no sign of 0-255 units."""
    if norm == "l1" or epsilon <= image_diameter(norm, shape):
        return None
    return (f"{norm} epsilon {label} is above the largest distance between two images in [0, 1] "
            f"({image_diameter(norm, shape):.4g} for {'x'.join(map(str, shape))} images): written in 0-255 "
            f"units? Images here are in [0, 1], so write 8/255 for 8 of those")


def epsilon_warnings(norm_epsilons, shape):
    """Warnings for epsilons that exceed what images allow: a ball larger than the images' diameter
    (image_diameter) holds every image."""
    diameter = {norm: image_diameter(norm, shape) for norm in NORMS}
    warnings = []
    for norm, label, epsilon in norm_epsilons:
        if epsilon >= diameter[norm]:
            warnings.append(f"{norm} epsilon {label} is at least the image diameter ({diameter[norm]:.4g} for "
                            f"{'x'.join(map(str, shape))} images in [0, 1]): its ball holds every image, so "
                            f"no model can be robust there")
    return warnings
