"""What a run folder records, and how: the run's name, args.json, the epoch lines of log.txt, metrics.csv,
curves.png, and the random-number state that last.pt keeps."""
import csv
import datetime
import io
import json
import os
import re
import textwrap

import torch

from utils import percent, write_atomically

BEST = ("clean_accuracy", "robust_accuracy")  # a best_*.pt file per figure


def best_file_name(key):
    return f"best_{key.split('_')[0]}.pt"


def alp_name(args):
    # the weights of the cross-entropies join the name only where they are not 1 and 1: the names of the runs
    # from before they were flags stay theirs
    weights = ("" if (args.get("clean_weight", 1), args.get("adv_weight", 1)) == (1, 1)
               else f"-cw{args['clean_weight']:g}-aw{args['adv_weight']:g}")
    return (f"ALP-lev{args['leverage']:g}{weights}-{args['attack']}-eps{args['epsilon']:.4g}-steps{args['steps']}"
            f"-step{args['stepsize']:.4g}")


# The method's part of a run folder's name, by the method's name (flags.METHOD_FLAGS): its own hyper-parameters.
METHOD_NAMES = {
    "ALP": alp_name,
    "CLP": lambda args: f"CLP-pw{args['pairing_weight']:g}-noise{args['noise_std']:g}",
    "LSQ": lambda args: f"LSQ-sw{args['squeeze_weight']:g}-noise{args['noise_std']:g}",
}


def run_name(args):
    """A run folder's name, from the run's arguments (a dict): data set, model, method and the hyper-parameters
    that tell runs apart. The others that change the result (momentum, betas, --eval-freq, ...) are checked
    against the run's record on --resume. Arguments that name no method are ALP's (the only one before)."""
    name = (f"{args['dataset']}-{args['model']}-{METHOD_NAMES[args.get('method', 'ALP')](args)}-{args['optimizer']}"
            f"-lr{args['lr']:g}-wd{args['weight_decay']:g}-{args['learning_policy']}-ep{args['epochs']}"
            f"-b{args['batch_size']}-seed{args['seed']}")
    return (name + (f"-ratio{args['ratio']:g}" if args["ratio"] else "")
            + (f"-subset{args['subset']}" if args["subset"] else ""))


# --- args.json ---------------------------------------------------------------------------------------------------

def in_force(device, world_size, amp, channels_last, cudnn_benchmark, compiled, cuda_graph, data_id):
    """What actually ran, after the device checks: args.json records it beside the command line."""
    return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": str(device), "world_size": world_size, "torch": torch.__version__, "amp": amp,
            "channels_last": channels_last, "cudnn_benchmark": cudnn_benchmark, "compile": compiled,
            "cuda_graph": cuda_graph, "data_digest": data_id, "pid": os.getpid()}


def first_args(path):
    """The arguments a run started with, from its args.json at `path` ({} without a readable one)."""
    try:
        with open(path) as f:
            record = json.load(f)
        return dict(record["runs"][0]["args"] if "runs" in record else record)  # older: the bare arguments
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}


def recorded_data_digest(path):
    """The data digest the first start in args.json at `path` records (None without one)."""
    try:
        with open(path) as f:
            digest = json.load(f)["runs"][0]["in_force"]["data_digest"]
        return digest if isinstance(digest, str) else None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def mark_epochs_changed(path, change):
    """args.json at `path` with `change` ({"from", "to", "folder_was"}) as its last record's "epochs_changed",
    unless a record holds it already: a change recorded again after a stop is still recorded once."""
    try:
        with open(path) as f:
            runs = list(json.load(f)["runs"])
        runs[-1].get("epochs_changed")
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        runs = [{}]  # unreadable: last.pt is what counts; the record starts again
    if any(record.get("epochs_changed") == change for record in runs):
        return
    runs[-1]["epochs_changed"] = change
    write_atomically(path, json.dumps({"runs": runs}, indent=2) + "\n")


def append_start(path, args, in_force, resume):
    """args.json at `path` with this start appended ({"runs": [{"args", "in_force"[, "epochs_changed"]},
    ...]}); a new run's record starts afresh. "epochs_changed" is added by mark_epochs_changed."""
    runs = []
    if resume and os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
            runs = old["runs"] if "runs" in old else [{"args": old}]
        except (OSError, ValueError, KeyError, TypeError):
            runs = []  # unreadable: last.pt is what counts; the record starts again
    runs.append({"args": args, "in_force": in_force})
    write_atomically(path, json.dumps({"runs": runs}, indent=2) + "\n")


# --- log.txt -----------------------------------------------------------------------------------------------------

# What an epoch's training accuracy is measured on, as its log line and curves.png name it (by the method of
# the script): ALP's on the adversarial half of each batch, CLP's and LSQ's on the batches they train on
# (noised, unless --noise-std 0).
TRAINING_ACCURACY = {"ALP": ("adv acc", "training (adversarial half)"),
                     "CLP": ("train acc", "training batches"), "LSQ": ("train acc", "training batches")}


def epoch_line(row, epochs, method="ALP"):
    accuracies = (f" | clean {percent(row['clean_accuracy'])} robust {percent(row['robust_accuracy'])}"
                  if row["clean_accuracy"] is not None else "")
    return (f"epoch {row['epoch']:3d}/{epochs} | lr {row['lr']:.4g} | loss {row['train_loss']:.4f} | "
            f"{TRAINING_ACCURACY[method][0]} {percent(row['train_adv_accuracy'])}{accuracies} | {row['seconds']:.1f}s"
            + (f" (validation {row['validation_seconds']:.1f}s)" if row.get("validation_seconds") else ""))


def logged_epoch(line):
    """The epoch an epoch line of log.txt is about, or None for another line. By number alone: a run whose
    --epochs changed logged it with another count, and a run of an earlier release with other words."""
    match = re.match(r"epoch +(\d+)/\d+ \|", line)
    return int(match.group(1)) if match else None


# --- random-number state -----------------------------------------------------------------------------------------

def get_rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- metrics and plots -------------------------------------------------------------------------------------------

def write_csv(rows, path):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def curves_figure(rows, title="", robust_label="robust", method="ALP"):
    """The figure of plot_curves. Above, accuracy (%): training's (TRAINING_ACCURACY) at every epoch, and
    validation's, clean and under its attack (`robust_label` names it), at every validated epoch; below, the
    training loss at every epoch. Markers where there are few points to see, the whole title wrapped, and a
    note instead of an empty frame."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trained = [r for r in rows if r.get("train_loss") is not None]
    validated = [r for r in rows if r.get("clean_accuracy") is not None]
    fig, (accuracy, loss) = plt.subplots(2, 1, sharex=True, figsize=(6.4, 6.0), height_ratios=(2, 1))
    def draw(ax, kept, key, label, scale=100, **style):
        ax.plot([r["epoch"] for r in kept], [scale * r[key] for r in kept], label=label,
                marker="o" if len(kept) <= 40 else None, **style)
    draw(accuracy, trained, "train_adv_accuracy", TRAINING_ACCURACY[method][1], color="0.6", markersize=4)
    draw(accuracy, validated, "clean_accuracy", "validation, clean", color="C0")
    draw(accuracy, validated, "robust_accuracy", f"validation, {robust_label}", color="C1")
    draw(loss, trained, "train_loss", "training loss", scale=1, color="0.4", markersize=4)
    if rows:
        accuracy.legend(fontsize=8)
    else:
        accuracy.text(0.5, 0.5, "no epoch yet", ha="center", va="center", transform=accuracy.transAxes)
    if rows and not validated:
        accuracy.text(0.5, 0.5, "no validated epoch yet", ha="center", va="center", transform=accuracy.transAxes)
    accuracy.set_ylabel("accuracy (%)")
    accuracy.set_ylim(0, 100)
    loss.set_ylabel("training loss")
    loss.set_xlabel("epoch")
    epochs = [r["epoch"] for r in rows]
    if len(set(epochs)) == 1:  # one point: integer ticks around it, not 0.945 ... 1.050
        loss.set_xlim(epochs[0] - 1, epochs[0] + 1)
    loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy.set_title("\n".join(textwrap.wrap(title, 70) or [""]), fontsize=8)
    for ax in (accuracy, loss):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(rows, path, title="", robust_label="robust", method="ALP"):
    """curves.png of a run: see curves_figure."""
    import matplotlib.pyplot as plt
    fig = curves_figure(rows, title, robust_label, method)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomically(path, buffer.getvalue())
