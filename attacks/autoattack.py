"""AutoAttack (Croce & Hein 2020) through the pyautoattack package: an adapter to this package's attack
interface, not a re-implementation, so that results are AutoAttack's own.

The standard version runs APGD-CE, APGD-T, FAB-T and Square (5000 queries) in sequence, each on the samples
still classified correctly. pyautoattack's standard version is not the same in every norm: for l1 its APGD-CE
makes 5 restarts instead of 1, both APGD runs follow its l1 schedule (30% of the iterations at 3 epsilon, 30% at
2 epsilon, the last 40% at epsilon, each stage starting where the last ended: Croce & Hein 2021), and APGD-T
targets 5 classes instead of 9. That is what runs here.
"""
import logging
from contextlib import contextmanager

import torch

from .common import NORMS, attacking, device_of

PACKAGE_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


@contextmanager
def _logging_of(logger, verbose):
    """pyautoattack reports through its logger, warnings included (its randomness and gradient checks): silence
    it unless verbose, and then make sure its progress lines reach stderr. Restored afterwards."""
    level, handler = logger.level, None
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    if verbose and not logger.hasHandlers():
        handler = logging.StreamHandler()
        logger.addHandler(handler)
    try:
        yield
    finally:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)


class AutoAttack:
    """pyautoattack's AutoAttack with a fixed seed. Returns its adversarial examples: the clean image for
    every sample it did not break. batch_size: how many images the package attacks at once (None: all it is
    given, the evaluation's unit, which is sized for the device). verbose lets the package's log through."""

    def __init__(self, epsilon, norm, version="standard", seed=0, batch_size=None, verbose=False):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        self.epsilon, self.norm, self.version, self.seed = epsilon, norm, version, seed
        self.batch_size, self.verbose = batch_size, verbose

    def __call__(self, model, x, y):
        # Imported here, not with the registry: training uses the other attacks and needs no AutoAttack.
        from pyautoattack import AutoAttack as PackageAutoAttack

        device = device_of(model, default=x.device)
        with attacking(model):
            adversary = PackageAutoAttack(model, device=device, eps=self.epsilon, norm=PACKAGE_NORMS[self.norm],
                                          seed=self.seed, version=self.version)
            adversary.verbose = self.verbose
            # The package seeds torch's global generators itself; keep the caller's random streams as they were.
            cuda_devices = [device] if device.type == "cuda" else []
            with _logging_of(adversary.logger, self.verbose), torch.random.fork_rng(devices=cuda_devices):
                x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size or len(x))
        return x_adv.to(x.device, x.dtype)
