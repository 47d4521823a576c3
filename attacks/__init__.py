"""Attack registry: name -> constructor(epsilon, **options) -> attack.

Every attack is called as attack(model, x, y) -> x_adv with images in [0, 1] (the model normalises), puts
the model in eval mode and freezes its parameters while it runs (see common.attacking), and carries
`.epsilon` and `.norm` so that callers can check its output lies in the threat model.
"""
from functools import partial

from .autoattack import AutoAttack
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .pgd import FGSM, PGD
from .slide import SLIDE

ATTACKS = {
    "fgsm": FGSM,
    "pgd-linf": partial(PGD, norm="linf"),
    "pgd-l2": partial(PGD, norm="l2"),
    "pgd-l1": partial(PGD, norm="l1"),
    "slide": SLIDE,
    "deepfool-linf": partial(DeepFool, norm="linf"),
    "deepfool-l2": partial(DeepFool, norm="l2"),
    "cw-l2": CarliniWagnerL2,
    "aa-linf": partial(AutoAttack, norm="linf"),
    "aa-l2": partial(AutoAttack, norm="l2"),
    "aa-l1": partial(AutoAttack, norm="l1"),
}
