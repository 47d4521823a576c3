"""The time a run will take: seconds per training batch measured on its first batches, and the line that
says what the run will cost."""
import re
import time

import torch

from utils import DURATION_PATTERN, duration, duration_seconds

from .hyp import HYP


class BatchClock:
    """Seconds per training batch, measured on the first batches a process trains: the first `untimed`
    batches are left out (they pay one-off costs; cuda_graph.GraphedStep.UNTIMED for the graph-replayed
    step, whose warm-ups and capture are not what the epoch repeats), then HYP["timed_batches"] batches or
    HYP["timed_seconds"] of them, whichever comes first. tick() after each batch returns the figure once,
    when it is ready (at the latest after the epoch's last batch, from whatever was timed), and None
    otherwise. Only the clock is read: the device is waited for at those ticks, nothing else changes."""

    def __init__(self, device, untimed=1):
        self.device = torch.device(device)
        self.ticks, self.first, self.started, self.done = 0, None, time.perf_counter(), False
        self.untimed = untimed
        self.timed = 0  # batches the figure comes from

    def tick(self, last=False):
        if self.done:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.ticks += 1
        if self.ticks <= self.untimed:
            self.first = now
            if not last:
                return None
        timed = self.ticks - self.untimed
        if last or timed >= HYP["timed_batches"] or now - self.first >= HYP["timed_seconds"]:
            if timed <= 0:  # an epoch too short to time past the untimed batches: the whole of it
                self.done, self.timed = True, self.ticks
                return (now - self.started) / self.ticks
            self.done, self.timed = True, timed
            return (now - self.first) / timed
        return None


def estimate_line(training, batches_timed, validation, images_timed, epochs, validations, resumed):
    """The time the run will take, from `training` seconds per epoch and `validation` seconds per validation
    (both measured, as the line says), over the `epochs` this process runs, `validations` of them
    validated."""
    total = duration(training * epochs + validation * validations)
    epochs_text = f"{epochs} epoch{'s' if epochs > 1 else ''}"
    left = f"the {epochs_text} left" if resumed else epochs_text
    if validations == epochs:
        per_epoch = (f"{duration(training + validation)} per epoch (training {duration(training)}, validation "
                     f"{duration(validation)})")
    else:
        per_epoch = (f"{duration(training)} per epoch of training, {duration(validation)} per validation "
                     f"({validations} validated epoch{'s' if validations > 1 else ''})")
    return (f"estimated: {per_epoch}, {total} for {left} (timed on {batches_timed} training "
            f"batch{'es' if batches_timed > 1 else ''} and {images_timed} validation images)")


# The figures of estimate_line's two forms (every epoch validated, or some), each found on its own.
ESTIMATED_FIGURES = {
    "per_epoch": re.compile(rf"^estimated: ({DURATION_PATTERN}) per epoch \("),  # validation included
    "training": re.compile(rf"^estimated: .*?\(training ({DURATION_PATTERN}),|"
                           rf"^estimated: ({DURATION_PATTERN}) per epoch of training,"),
    "validation": re.compile(rf"^estimated: .*?validation ({DURATION_PATTERN})\)|"
                             rf"^estimated: .*?, ({DURATION_PATTERN}) per validation"),
    "total": re.compile(rf"^estimated: .*?, ({DURATION_PATTERN}) for "),
}


def read_estimate_line(line):
    """The seconds that an estimate_line printed, by figure (per_epoch, training, validation, total; those
    the line holds); {} for any other line."""
    figures = {}
    for name, pattern in ESTIMATED_FIGURES.items():
        found = pattern.search(line)
        if found:
            figures[name] = duration_seconds(next(group for group in found.groups() if group))
    return figures
