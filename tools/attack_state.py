"""How many image-sized float32 tensors each attack of a suite holds per sample: the figure behind
evaluation/width.py's ATTACK_STATE_IMAGES.

    python tools/attack_state.py cifar      # about 6 minutes on one CPU thread (AutoAttack's l1 the most)

The peak bytes of the tensors alive during the attack, counted at the dispatcher (CPU), over 16 images, on a
linear model that no attack can break (class 0 by a wide margin, a small gradient left): every sample then
runs every step of every sub-attack, and the model's own activations (its logits) weigh nothing beside the
images. Per sample, in units of one float32 image.
"""
import os
import sys
import time
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import ATTACKS  # noqa: E402
from evaluation import SUITES, parse_epsilon  # noqa: E402
from evaluation.suite import is_autoattack  # noqa: E402
from models.normalize import Normalize  # noqa: E402

SHAPES = {"cifar": (3, 32, 32), "mnist": (1, 28, 28)}
IMAGES = 16


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by the storages that the ops run under it made, each counted until the
    last tensor made on it is gone."""

    def __init__(self):
        super().__init__()
        self.holders, self.sizes, self.current, self.peak = {}, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr():
                key = tensor.untyped_storage().data_ptr()
                if key not in self.holders:
                    self.holders[key], self.sizes[key] = 0, tensor.untyped_storage().nbytes()
                    self.current += self.sizes[key]
                    self.peak = max(self.peak, self.current)
                self.holders[key] += 1
                weakref.finalize(tensor, self._let_go, key)
        return result

    def _let_go(self, key):
        self.holders[key] -= 1
        if not self.holders[key]:
            self.current -= self.sizes.pop(key)
            del self.holders[key]


def unbreakable_linear_model(shape, classes=10):
    torch.manual_seed(0)
    linear = nn.Linear(torch.Size(shape).numel(), classes)
    with torch.no_grad():
        linear.weight.mul_(1e-3)
        linear.bias.zero_()
        linear.bias[0] = 100.0
    return nn.Sequential(Normalize((0.5,) * shape[0], (0.25,) * shape[0]), nn.Flatten(), linear).eval()


def main(family):
    shape = SHAPES[family]
    model = unbreakable_linear_model(shape)
    x = torch.rand(IMAGES, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(IMAGES, dtype=torch.long)
    image_bytes = x[0].numel() * 4
    for norm, table in SUITES[family].items():
        epsilon = parse_epsilon(table["epsilons"][0])
        for label, name, options in table["attacks"]:
            attack = ATTACKS[name](epsilon, **options, **({"seed": 0} if is_autoattack(name) else {}))
            started = time.time()
            with LiveBytes() as live:
                attack(model, x, y)
            print(f"{family} {norm:4s} {label:9s} {live.peak / (IMAGES * image_bytes):5.1f} images per sample "
                  f"({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cifar")
