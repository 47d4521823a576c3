"""Validation after a training epoch: its attack (eval.py's own), the figures, their timing, when it runs,
and the verdict on a run that has barely learnt."""
import copy
import time

import torch

from attacks import ATTACKS
from data import DATASETS
from evaluation.suite import SUITES, parse_epsilon
from reference import TABLES
from utils import percent, with_progress

from .hyp import HYP


def validation_column(family):
    """(label, attack name, options) of the eval.py ℓ∞ column HYP["validation_attack"] names for the family."""
    label = HYP["validation_attack"][family]
    (column,) = [column for column in SUITES[family]["linf"]["attacks"] if column[0] == label]
    return column


def validation_attack(family):
    """The attack that validates a run of the data-set family: eval.py's ℓ∞ column HYP["validation_attack"]
    names, at its table's first epsilon."""
    _, name, options = validation_column(family)
    return ATTACKS[name](parse_epsilon(SUITES[family]["linf"]["epsilons"][0]), **options)


def validation_name(dataset):
    """The validation attack as the curves label it: "PGD-100 (ℓ∞ 0.3)"."""
    family = DATASETS[dataset].family
    return f"{HYP['validation_attack'][family]} (ℓ∞ {SUITES[family]['linf']['epsilons'][0]})"


def validation_batch_size(device):
    return HYP["validation_batch"]["cuda" if torch.device(device).type == "cuda" else "cpu"]


def validates(epoch, epochs, eval_freq):
    """Whether epoch `epoch` (from 0) ends with a validation: every --eval-freq-th, and the last."""
    return (epoch + 1) % eval_freq == 0 or epoch + 1 == epochs


def validate(model, loader, attack, num_classes, progress=False, desc="validating"):
    """(clean accuracy, robust accuracy, per-class counts of the clean predictions) on a validation loader;
    the counts tell a model that predicts one class, whose accuracies mean nothing yet. In float32 whatever
    autocast training runs under, as eval.py's attacks: bf16 changed PGD-100's accuracy on an ALP-trained
    MNIST net by points, and the validation curve should show the figure eval.py would give."""
    was_training = model.training
    model.eval()
    clean = robust = 0
    counts = torch.zeros(num_classes, dtype=torch.long, device=loader.labels.device)
    for x, y in with_progress(loader.epoch(), len(loader), desc, progress, unit="batch"):
        x_adv = attack(model, x, y)
        with torch.no_grad():
            predicted, predicted_adv = model(x).argmax(1), model(x_adv).argmax(1)
        clean += (predicted == y).sum()
        robust += (predicted_adv == y).sum()
        counts += torch.bincount(predicted, minlength=num_classes)
    model.train(was_training)
    n = len(loader.labels)
    return clean.item() / n, robust.item() / n, counts


def validation_seconds(model, loader, attack, num_classes):
    """(seconds a validation of all of `loader` will take, images timed): from one timed validation of its
    first batch. It runs inside torch.random.fork_rng, and validation changes neither weights nor BatchNorm
    statistics, so the run goes on as if it had not happened (a resumed run stays bit-exact)."""
    device = loader.labels.device
    probe = copy.copy(loader)
    probe.images, probe.labels = loader.images[:loader.batch_size], loader.labels[:loader.batch_size]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        started = time.perf_counter()
        validate(model, probe, attack, num_classes)  # .item() waits for the device
        seconds = time.perf_counter() - started
    return seconds * len(loader.labels) / len(probe.labels), len(probe.labels)


# The lowest clean accuracy of a fully trained ALP model in the reference's tables (reference.py), by data set:
# CIFAR-10's ResNet32 at leverage 1, CIFAR-100's ResNet18 (it lists no ResNet32, which is smaller and lower
# still), the MNIST net on MNIST and Fashion-MNIST. SVHN has no row.
REFERENCE_CLEAN_ACCURACY = {dataset: min(t.clean for t in TABLES.values() if t.dataset == dataset) / 100
                            for dataset in {table.dataset for table in TABLES.values()}}


def clean_barely_learnt(clean, dataset):
    """Why this clean accuracy is far from useful (less than halfway from chance to what a fully trained model
    reaches on the data set), or None: barely_learnt's verdict on clean accuracy alone."""
    chance = 1 / DATASETS[dataset].num_classes
    halfway = (chance + REFERENCE_CLEAN_ACCURACY.get(dataset, 1.0)) / 2
    if clean >= halfway:
        return None
    return (f"clean {percent(clean)} is less than {100 * halfway:.1f}%, halfway from chance ({100 * chance:.3g}%) "
            f"to what a fully trained model reaches")


def barely_learnt(clean, robust, dataset):
    """Why a run whose best validation figures are these has barely learnt yet, or None. Chance is
    1 / classes (the balanced validation splits of --subset, and the test splits, are about even). Robust
    accuracy at or below chance is what guessing gets under any attack. Clean accuracy below halfway from
    chance to what a fully trained model reaches (REFERENCE_CLEAN_ACCURACY; 100% where the reference has no
    figure) is far from useful: 54.7% on MNIST, 43.6% on CIFAR-10, 28.4% on CIFAR-100, so that the README's
    ResNet32 CIFAR-100 command, whose model the reference does not list, is not warned about once trained."""
    chance = 1 / DATASETS[dataset].num_classes
    reasons = [clean_barely_learnt(clean, dataset)] if clean_barely_learnt(clean, dataset) else []
    if robust <= chance:
        reasons.append(f"robust {percent(robust)} is no better than chance ({100 * chance:.3g}%)")
    return "; ".join(reasons) or None


def barely_learnt_note(best, dataset):
    """The run's last line's warning when its best validation figures say it has barely learnt, or None."""
    if min(best["clean_accuracy"], best["robust_accuracy"]) < 0:  # no figures kept
        return None
    why = barely_learnt(best["clean_accuracy"], best["robust_accuracy"], dataset)
    return f"the model has barely learnt ({why}): more epochs or images (--subset) needed" if why else None
