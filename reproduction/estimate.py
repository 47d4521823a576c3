"""How long a reproduction will take on this device, said once ALP.py has timed its first batches: ALP.py's
own estimate of training, and the evaluation's attacks costed in gradient steps at the seconds per image and
step that ALP.py's validation attack took."""
import json
import math
import os
import re

from data import DATASETS
from evaluation.suite import SANITY, SUITES, cli_name, columns_of, gradient_steps
from training.clock import read_estimate_line
from training.validation import validation_column
from utils import duration, read_json, write_atomically

PER_EVALUATION_STEPS = 1 + SANITY["options"]["steps"]  # each eval.py run: the clean predictions, the sanity PGD
# ALP.py's line as it starts: "... 60000 training, 10000 validation images".
VALIDATION_IMAGES = re.compile(r"\d+ training, (\d+) validation images")


class Estimate:
    """How long the whole will take on this device, from what ALP.py prints as it starts: its own estimate
    of training, and the validation's timing, which gives the seconds of one gradient step per image, from
    which the evaluation's attacks are estimated by their gradient steps."""

    def __init__(self, folder, dataset, images, evaluation_runs, device_note):
        self.path = os.path.join(folder, "estimate.json")
        self.family = DATASETS[dataset].family
        self.images, self.runs, self.device_note = images, evaluation_runs, device_note
        self.validation_images = None

    def evaluation_steps(self, runs):
        suite = SUITES[self.family]
        return sum(PER_EVALUATION_STEPS + sum(gradient_steps(column) for column in columns_of(suite[norm], True)
                                              if cli_name(column[0]) in attacks)
                   for norm, attacks in runs)

    def read_training_line(self, line):
        found = VALIDATION_IMAGES.search(line)
        if found:
            self.validation_images = int(found.group(1))
        figures = read_estimate_line(line)
        if not ("total" in figures and "validation" in figures and self.validation_images):
            return
        validation_steps = validation_column(self.family)[2]["steps"]
        per_step = figures["validation"] / (self.validation_images * (validation_steps + 1))
        try:
            write_atomically(self.path, json.dumps({"seconds_per_image_step": per_step}))
        except OSError:
            pass
        self.say(figures["total"], per_step, self.runs)

    def say_for_evaluation(self, runs_left):
        """At a start after training: the evaluations left, from the timing kept in estimate.json."""
        per_step = (read_json(self.path) or {}).get("seconds_per_image_step")
        if runs_left and isinstance(per_step, (int, float)) and math.isfinite(per_step) and per_step > 0:
            self.say(None, per_step, runs_left)

    def say(self, training_seconds, per_step, runs):
        steps = self.evaluation_steps(runs)
        evaluation_seconds = steps * self.images * per_step
        training = (f"training {duration(training_seconds)} (the training script's estimate above, validation "
                    f"included), "
                    if training_seconds is not None else "")
        total = (f"; about {duration(training_seconds + evaluation_seconds)} in all"
                 if training_seconds is not None else "")
        print(f"reproduce.py: estimated on {self.device_note}: {training}evaluation at most "
              f"{duration(evaluation_seconds)} ({len(runs)} eval.py run{'s' if len(runs) > 1 else ''} on "
              f"{self.images:,} test images, {steps:,.0f} gradient steps per image at the "
              f"{1000 * per_step:.3g} ms per image and step of ALP.py's validation; DeepFool, C&W and AutoAttack "
              f"stop on the samples they break, so they take less on a less robust model){total}", flush=True)
