"""What an evaluation's units of work belong to, and where finished ones are kept: the digests of the
evaluated weights and images, the context that goes into every unit's key, and the UnitStore on disk from
which a killed evaluation continues."""
import hashlib
import json
import math
import os

import torch

from attacks.common import NORMS
from data import data_digest
from utils import update_digest, write_atomically


# --- what is evaluated ---------------------------------------------------------------------------------------

def weights_digest(model):
    """SHA-256 of a model's class name and state_dict (every parameter and buffer, by name), whatever the
    memory layout its tensors are held in: two models with the same digest give the same figures."""
    sha = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        sha.update(name.encode())
        update_digest(sha, tensor)
    return sha.hexdigest()


def images_digest(images, labels):
    """SHA-256 of the evaluated images (as given: uint8 or float) and their labels (as class indices)."""
    return data_digest(images, labels.long())


def evaluation_digests(model, images=None, labels=None, source=None):
    """{"weights", "images", "source_weights"}: the digests of what an evaluation evaluates (those given)."""
    digests = {"weights": weights_digest(model)}
    if images is not None:
        digests["images"] = images_digest(images, labels)
    if source is not None:
        digests["source_weights"] = weights_digest(source)
    return digests


def unit_context(digests, device):
    """What a unit's outcome depends on besides its job: the weights and images (their digests) and the kind
    of device (CPU and CUDA kernels round differently). Part of every unit's key, so that a stored unit is
    never taken for an evaluation of other weights or images."""
    return hashlib.sha256(json.dumps([digests, torch.device(device).type], sort_keys=True).encode()).hexdigest()


# --- finished units on disk ----------------------------------------------------------------------------------

MANIFEST = "manifest.json"  # in a units folder: what evaluation its units belong to (eval.py writes it)


def is_outcome(outcome):
    """Whether a stored unit's outcome has run_unit's shape: a file edited by hand, or written by another
    release, is recomputed rather than trusted."""
    try:
        n, broken, sizes = len(outcome["indices"]), outcome["broken"], outcome["sizes"]
        return (all(isinstance(i, int) for i in outcome["indices"]) and len(broken) == n
                and all(isinstance(b, bool) for b in broken) and len(sizes) == sum(broken)
                and all(len(size) == len(NORMS) and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                        for v in size) for size in sizes)
                and isinstance(outcome["seconds"], (int, float)) and math.isfinite(outcome["seconds"]))
    except (KeyError, TypeError):
        return False


class UnitStore:
    """Finished units' outcomes, one small JSON file each in `folder`, written atomically as each unit
    finishes: a killed evaluation loses only the units in flight. Files that cannot be read, or do not hold
    a unit's outcome, are counted in `unreadable`, and their units run again."""

    def __init__(self, folder):
        self.folder, self.outcomes, self.unreadable = folder, {}, 0
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".json") and name != MANIFEST:
                    try:
                        with open(os.path.join(folder, name)) as f:
                            saved = json.load(f)
                        if not (isinstance(saved["key"], str) and is_outcome(saved["outcome"])):
                            raise ValueError("not a unit's outcome")
                        self.outcomes[saved["key"]] = saved["outcome"]
                    except (OSError, ValueError, KeyError, TypeError):
                        self.unreadable += 1

    def kept(self):
        """How many units the folder holds: under torch.distributed, other processes' too."""
        if not os.path.isdir(self.folder):
            return 0
        return sum(name.endswith(".json") and name != MANIFEST for name in os.listdir(self.folder))

    def get(self, key, indices):
        """The outcome stored for `key`, if it attacked these very samples."""
        outcome = self.outcomes.get(key)
        return outcome if outcome is not None and outcome["indices"] == indices else None

    def put(self, key, outcome, write=True):
        """Keeps the outcome; raises OSError where the folder cannot be written (a full disk)."""
        self.outcomes[key] = outcome
        if write:
            os.makedirs(self.folder, exist_ok=True)
            name = hashlib.sha256(key.encode()).hexdigest()[:24] + ".json"
            write_atomically(os.path.join(self.folder, name), json.dumps({"key": key, "outcome": outcome}))

