"""Shared plumbing for the scripts: CLI parsing, optimisers and learning-rate policies, checkpoints,
random-number state, and plots."""
import argparse
import csv
import os
import pickle
import sys
import zipfile

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR

from data import DATASETS
from models import MODELS


class CLIParser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (no usage dump) with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message, status=2):
    """Stop a script with one line on stderr: for bad input and data or checkpoints that cannot be used."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(status)


OPTIMIZERS = {
    "sgd": lambda params, args: torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                                weight_decay=args.weight_decay),
    "adam": lambda params, args: torch.optim.Adam(params, lr=args.lr, betas=(args.beta1, args.beta2),
                                                  weight_decay=args.weight_decay),
}


def _steps(milestones, gamma=0.1):
    return lambda optimizer, epochs: MultiStepLR(optimizer, milestones, gamma)


# name -> (optimizer, total epochs) -> scheduler, stepped once at the end of every epoch. A milestone m
# means epochs m, m+1, ... (counting from 0) run at the reduced rate.
LEARNING_POLICIES = {
    "null": _steps([]),
    "AT": _steps([102, 154]),
    "STD": _steps([82, 123]),
    "STD-wrn": _steps([60, 120, 160], gamma=0.2),
    "TRADES": _steps([75, 90, 100]),
    "TRADES-M": _steps([55, 75, 90]),
    "cosine": lambda optimizer, epochs: CosineAnnealingLR(optimizer, T_max=epochs),
}


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- checkpoints -----------------------------------------------------------------------------------------

class CheckpointError(Exception):
    pass


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


def checkpoint_meta(args, num_classes):
    """What rebuilds the model without the command line: eval.py needs only the checkpoint."""
    return {"model": args.model, "dataset": args.dataset, "num_classes": num_classes, "args": vars(args)}


def build_model(name, dataset):
    spec = DATASETS[dataset]
    return MODELS[name](num_classes=spec.num_classes, mean=spec.mean, std=spec.std)


def model_from_checkpoint(state):
    meta = state["meta"]
    model = build_model(meta["model"], meta["dataset"])
    model.load_state_dict(state["model"])
    return model


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


# --- metrics and plots -----------------------------------------------------------------------------------

def write_csv(rows, path):
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_curves(rows, path, title=""):
    """Clean and robust validation accuracy per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("clean_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("clean_accuracy", "clean"), ("robust_accuracy", "robust")):
        ax.plot([r["epoch"] for r in rows], [100 * r[key] for r in rows], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
