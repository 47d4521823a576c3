"""Our figures beside the reference's, each with its difference, and the rule that flags a difference as more
than run-to-run randomness explains."""
import math

from reference import TEST_IMAGES

# When a figure counts as outside run-to-run randomness: |ours - reference| > Z * se + SEED_SPREAD, in points.
SPREAD = {
    # se: the binomial standard error of the difference of two accuracies measured on n_ref and n test
    # images, if both models had the reference's accuracy p: sqrt(p(1-p)(1/n_ref + 1/n)) (the reference's own
    # p, not ours, so that a figure of 0% or 100% on a few images still gets its sampling error). 3 of them:
    # a table has up to 17 figures (the clean accuracy with them), and at 2 one figure in 22 would be flagged
    # by chance alone.
    "z": 3,
    # Training randomness (seed, data order, PGD starts) moves a model's accuracies by more than its test
    # images' sampling does. Not measured here (one full run per seed is days on this project's CPU machine):
    # an allowance of 1 point, to be replaced by the spread of repeated runs once there are some.
    "seed_spread": 1.0,
}


def allowed_difference(reference, n, reference_images=TEST_IMAGES):
    """The largest |ours - reference| (points) that run-to-run randomness explains (SPREAD), ours measured on
    n test images, the reference's on reference_images."""
    p = reference / 100
    se = math.sqrt(p * (1 - p) * (1 / reference_images + 1 / n))
    return SPREAD["z"] * 100 * se + SPREAD["seed_spread"]


def spread_rule(n, reference_images=TEST_IMAGES):
    """SPREAD in words, ours measured on n test images: printed and written with every comparison."""
    return (f"A figure is outside when |ours - reference| > {SPREAD['z']} standard errors of the difference "
            f"(binomial, the reference on {reference_images:,} test images, ours on {n:,}) + "
            f"{SPREAD['seed_spread']:g} point of training randomness (an allowance, not measured here).")


def comparison_row(label, attack, reference, ours, n, reference_images=TEST_IMAGES, only_above=False):
    """One figure beside the reference's. only_above: a figure below the reference's is never outside (an
    attack stronger than the reference's strongest is what an evaluation should be)."""
    difference = ours - reference
    allowed = allowed_difference(reference, n, reference_images)
    return {"label": label, "attack": attack, "reference": reference, "ours": round(ours, 2),
            "difference": round(difference, 2), "allowed": round(allowed, 2),
            "outside": (difference if only_above else abs(difference)) > allowed}


def compare(table, reports):
    """(test images, threat models): the reference's figures and ours, per threat model (the clean accuracy
    first), from eval.py's reports."""
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
