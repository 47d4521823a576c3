"""How long a reproduction will take on this device, said once ALP.py has timed its first batches: ALP.py's
own estimate of training, and the evaluation's attacks costed in gradient steps at the seconds per image and
step that ALP.py's validation attack took."""
import json
import os
import re

from utils import duration, write_atomically

from .folder import read_report

# The gradient steps (forward + backward) each attack takes per image that resists it to the end, from its
# settings in eval.py's suite. Attacks that stop on the samples they break (DeepFool, C&W, AutoAttack) take
# fewer on a less robust model, so the evaluation's estimate is an upper bound.
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
