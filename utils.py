"""Shared plumbing for the scripts: CLI parsing, optimisers and learning-rate policies, files written so that
a kill or a full disk leaves no half-written one, the run-folder lock, metrics files and plots. Checkpoints
are in checkpoints.py."""
import argparse
import csv
import errno
import io
import os
import sys
import textwrap

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default and keeps the description's own line breaks. On/off switches show
    none: "--no-amp (default: True)" would read as the opposite of what it means."""

    def _get_help_string(self, action):
        return action.help if action.nargs == 0 else super()._get_help_string(action)


class CLIParser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (no usage dump) with exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message, status=2):
    """Stop a script with one line on stderr: for bad input and data or checkpoints that cannot be used."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(status)


def short_reason(error):
    """An exception as one short clause: its type and the first non-empty line of its message (torchvision's
    download errors start with a line that ends in a colon and put the reason on the next)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " / ".join(lines[:3])
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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


# --- files -------------------------------------------------------------------------------------------------

def write_atomically(path, data):
    """Write bytes or text to `path` through `path.tmp` and a rename: a kill leaves the previous file intact.
    On any OSError (a full disk above all) the temporary file is removed before the error goes on, with
    the path it was meant for as its filename."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        e.filename = path
        raise


def describe_os_error(error):
    """One line for an OSError met while writing: a full disk is named as such."""
    if error.errno == errno.ENOSPC:
        return f"no space left on the device while writing {error.filename} (the temporary file was removed)"
    return f"cannot write {error.filename} ({error.strerror or short_reason(error)})"


class RunLock:
    """An exclusive lock on a run folder, held while a run is alive: an flock on `run.lock`, which also
    holds the owner's PID. The kernel drops the lock when its process dies, however it dies, so a lock left
    by a killed run is stale by construction and the next run takes it over."""

    NAME = "run.lock"

    def __init__(self, folder):
        import fcntl  # POSIX: the training scripts target Linux
        self.path = os.path.join(folder, self.NAME)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise RunLockHeld(holder) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self):
        self.file.close()  # closing drops the flock


class RunLockHeld(Exception):
    """Another live process holds the run folder's lock; args[0] is its PID as written in the lock file."""


def lock_holder(folder):
    """The PID (as text) of a live process holding `folder`'s run lock, or None."""
    if not os.path.isfile(os.path.join(folder, RunLock.NAME)):
        return None
    try:
        RunLock(folder).release()
    except RunLockHeld as held:
        return held.args[0]
    return None


# --- metrics and plots -----------------------------------------------------------------------------------

def write_csv(rows, path):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def curves_figure(rows, title=""):
    """The figure of plot_curves: clean and robust validation accuracy per validated epoch, with markers
    where there are few points to see, the whole title wrapped, and a note instead of an empty frame."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in rows if r.get("clean_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    marker = "o" if len(rows) <= 40 else None
    for key, label in (("clean_accuracy", "clean"), ("robust_accuracy", "robust (PGD)")):
        ax.plot([r["epoch"] for r in rows], [100 * r[key] for r in rows], label=label, marker=marker)
    if rows:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validated epoch yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("\n".join(textwrap.wrap(title, 70) or [""]), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(rows, path, title=""):
    """curves.png of a run: see curves_figure."""
    import matplotlib.pyplot as plt
    fig = curves_figure(rows, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomically(path, buffer.getvalue())
