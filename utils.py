"""Shared plumbing for the scripts: CLI parsing, optimisers and learning-rate policies, metrics files and
plots. Checkpoints are in checkpoints.py."""
import argparse
import csv
import os
import sys

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR


class CLIParser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (no usage dump) with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message, status=2):
    """Stop a script with one line on stderr: for bad input and data or checkpoints that cannot be used."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(status)


def _keep_own_kernels(optimizer, state_dict):
    """Load-state pre-hook: which kernel runs the update (fused or not) is a choice of this run, not state
    to restore, so a run may be resumed with or without --cuda-graph (a checkpoint's flag would otherwise
    override it, and a graph cannot capture the unfused update with a tensor learning rate)."""
    groups = [{**saved, **{key: own[key] for key in ("fused", "foreach", "capturable") if key in own}}
              for saved, own in zip(state_dict["param_groups"], optimizer.param_groups)]
    return {**state_dict, "param_groups": groups}


def _with_own_kernels(optimizer):
    optimizer.register_load_state_dict_pre_hook(_keep_own_kernels)
    return optimizer


# name -> (parameters, lr, momentum, weight_decay, betas, fused) -> optimizer. SGD ignores betas, Adam
# momentum. fused: one kernel for the whole update, which also reads a learning rate held in a device
# tensor; that is what a captured CUDA graph needs (training.GraphedStep). Adam must also be capturable:
# its step() refuses a capture otherwise.
OPTIMIZERS = {
    "sgd": lambda params, lr, momentum, weight_decay, betas, fused=False: _with_own_kernels(torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)),
    "adam": lambda params, lr, momentum, weight_decay, betas, fused=False: _with_own_kernels(torch.optim.Adam(
        params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None, capturable=fused)),
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
