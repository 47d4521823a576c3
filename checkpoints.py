"""Checkpoints: writing and reading them safely, and rebuilding the network a checkpoint holds.

A checkpoint of this project is a dict with at least "model" (the network's state_dict) and "meta" (what
rebuilds the network without the command line); `last.pt` adds the optimiser, scheduler, metrics and
random-number states that --resume needs.
"""
import os
import pickle
import zipfile

import torch

from data import DATASETS
from models import MODELS


class CheckpointError(Exception):
    """A checkpoint cannot be used: the message names the file and says why."""


def save_checkpoint(state, path):
    """Write to a temporary file, then rename: a kill at any moment leaves the previous file intact."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """A checkpoint's dict, loaded with weights_only=True: one that would run arbitrary code is refused."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds objects that need code to load; refusing it (weights_only=True "
                              f"loading: {str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model' and 'meta' entries)")
    return state


def checkpoint_meta(model_name, dataset, training_args):
    """What rebuilds the model without the command line: eval.py needs only the checkpoint."""
    return {"model": model_name, "dataset": dataset, "num_classes": DATASETS[dataset].num_classes,
            "args": dict(training_args)}


def build_model(name, dataset):
    spec = DATASETS[dataset]
    return MODELS[name](num_classes=spec.num_classes, mean=spec.mean, std=spec.std)


def model_from_checkpoint(state):
    meta = state["meta"]
    model = build_model(meta["model"], meta["dataset"])
    model.load_state_dict(state["model"])
    return model


def load_model(path, model_name=None, dataset=None):
    """(model on the CPU in eval mode, meta) from a checkpoint file, for evaluation. model_name and dataset
    say what the file holds where the file cannot (a bare state_dict); for this project's checkpoints they
    must agree with its meta where given. Raises CheckpointError."""
    state = load_checkpoint(path)
    meta = state["meta"]
    if not isinstance(meta, dict) or meta.get("dataset") not in DATASETS:
        raise CheckpointError(f"{path}: its meta names no known data set ({sorted(DATASETS)})")
    try:
        model = model_from_checkpoint(state)
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]})") from None
    meta = {**meta, "epoch": state.get("epoch")}
    return model.eval(), meta


# --- random-number state ---------------------------------------------------------------------------------

def get_rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
