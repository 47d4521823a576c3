"""What --resume allows: the arguments a run may change, a run grown or cut to another --epochs where its
learning-rate schedule allows it, a checkpoint that fits the data and processes, and the warning when the
resumed run computes otherwise. Each refusal ends the script in one line (utils.fail)."""
import math
import os
import re
import warnings

import torch

from optimization import LEARNING_POLICIES, unread_options
from utils import fail

# Arguments that may change between a run and its --resume: where things are and how fast they run. Every
# other argument must be what the run started with, or the resumed run would be another run. --epochs is in
# the folder's name; it may change where the learning-rate schedule allows (see schedule_change_refusal).
MAY_CHANGE_ON_RESUME = {"resume", "progress", "data_root", "out", "device", "amp", "channels_last",
                        "cudnn_benchmark", "compile", "cuda_graph", "epochs"}
# The speed options above that change the arithmetic (beside the device type): a run may continue with
# other ones (moved from a CPU to a GPU, say), with a warning that it will not equal an uninterrupted run.
# cudnn.benchmark picks among kernels that differ run to run anyway, and the CUDA graph replays the eager step.
CHANGE_THE_ARITHMETIC = {"amp": "bf16 autocast", "channels_last": "channels_last", "compile": "torch.compile"}
RESUME_KEYS = ("optimizer", "scheduler", "metrics", "best", "rng", "epoch")  # what last.pt holds beyond weights


def refuse_changed_arguments(recorded, args, record_path):
    """Ends the script if `args` (this command's) differ from `recorded` (the run's first) in an argument
    that changes the result. An optimiser option the run's optimiser does not read (SGD's momentum under
    Adam, recorded by older runs) is no such argument."""
    may_differ = MAY_CHANGE_ON_RESUME | unread_options(args.get("optimizer"))
    changed = sorted(k for k in recorded if k in args and k not in may_differ and recorded[k] != args[k])
    if changed:
        fail(f"--resume: {', '.join(f'--{k} {args[k]} (the run has {recorded[k]})' for k in changed)}; "
             f"resume with the run's own arguments (see {record_path})")


def refuse_another_runs_checkpoint(meta, args, recorded_digest, last, record_path):
    """Ends the script unless last.pt's own record of its run (`meta`: network, data set, arguments, data
    digest) is this run's: a last.pt copied from another run's folder would otherwise continue that run's
    weights under this run's name. `recorded_digest`: the data digest the folder's args.json records (None
    where it records none). Checked before anything in the folder changes."""
    trained_with = meta.get("args") or {}
    may_differ = MAY_CHANGE_ON_RESUME | unread_options(args.get("optimizer"))
    differing = [(key, trained_with[key]) for key in sorted(trained_with)
                 if key in args and key not in may_differ and trained_with[key] != args[key]]
    for key in ("model", "dataset"):  # what rebuilds the network, written beside the arguments
        if meta.get(key) is not None and meta[key] != args.get(key) and key not in dict(differing):
            differing.insert(0, (key, meta[key]))
    if differing:
        fail(f"--resume: {last} is another run's checkpoint: it was trained with "
             f"{', '.join(f'--{key} {value} (this run has {args[key]})' for key, value in differing)}; put this "
             f"run's own last.pt back, or start a new run (the run's arguments: {record_path})")
    trained_on = meta.get("data_digest")
    if trained_on is not None and recorded_digest is not None and trained_on != recorded_digest:
        fail(f"--resume: {last} was trained on other data than this run (data digest {trained_on[:12]}, "
             f"the run's {recorded_digest[:12]} in {record_path}): put this run's own last.pt back, or start a "
             f"new run")


def refuse_a_grown_run_under_its_old_count(meta, done, epochs, last):
    """A grow whose first new epoch was saved but whose folder kept its old name (stopped in between) is
    resumed under its new --epochs, which finishes the rename; under the old count it would look finished."""
    grown_to = (meta.get("args") or {}).get("epochs")
    if grown_to is not None and grown_to != epochs and done > epochs:
        fail(f"--resume --epochs {epochs}: {last} holds epoch {done} of this run grown to {grown_to} epochs "
             f"(stopped before its folder took the new name): resume it with --epochs {grown_to}")


def refuse_incomplete_checkpoint(state, last, others):
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        fail(f"{last} cannot be resumed: it holds no {', '.join(missing)} (a best_*.pt or epoch_*.pt copied "
             f"over it?); {others}")


def refuse_unless_it_fits(state, last, data_id, world_size):
    """Ends the script unless last.pt's state was trained on this data by this many processes."""
    trained_on = state["meta"].get("data_digest")
    if trained_on is not None and trained_on != data_id:
        fail(f"--resume: the data loaded now differs from the data {last} was trained on (digest "
             f"{data_id[:12]} vs {trained_on[:12]}): same data set files, --subset, --ratio and --seed?")
    if len(state["rng"]) != world_size:
        fail(f"--resume: {last} was written by {len(state['rng'])} processes; resume it with as many")


# --- another --epochs ------------------------------------------------------------------------------------------

def run_with_other_epochs(path, epochs):
    """(folder, its --epochs) of the run to continue where --resume finds no last.pt at `path`: often a run
    asked for another --epochs, whose folder has another name. Ends the script in one line where there is
    none, more than one, or a folder of the new name in the way."""
    others = runs_with_other_epochs(path, epochs)
    if not others:
        reason = ("the run stopped before its first epoch ended: start it again without --resume"
                  if os.path.isdir(path) else "no run was started with these arguments: start it without --resume")
        fail(f"--resume: nothing to resume, no checkpoint at {os.path.join(path, 'last.pt')} ({reason})")
    if len(others) > 1:
        fail(f"--resume --epochs {epochs}: the runs with these arguments and other --epochs are "
             f"{', '.join(folder for folder, _ in others)}; resume one of them with its own --epochs")
    (folder, before), = others
    if os.path.exists(path):
        fail(f"--resume --epochs {epochs}: {path} is there without a last.pt (a run with --epochs {epochs} that "
             f"stopped in its first epoch), so the run at {folder} cannot take that name: remove it to continue "
             f"that run with --epochs {epochs}, or start it again without --resume")
    return folder, before


def runs_with_other_epochs(path, epochs):
    """[(folder, its --epochs)] of the runs beside the folder `path` whose names differ only in --epochs and
    that hold a last.pt."""
    parent, name = os.path.split(path)
    marker = f"-ep{epochs}-"
    if marker not in name or not os.path.isdir(parent or "."):
        return []
    stem, tail = name.split(marker, 1)
    pattern = re.compile(re.escape(stem) + r"-ep(\d+)-" + re.escape(tail))
    return [(os.path.join(parent, other), int(match.group(1))) for other in sorted(os.listdir(parent or "."))
            if other != name and (match := pattern.fullmatch(other))
            and os.path.isfile(os.path.join(parent, other, "last.pt"))]


def refuse_unless_the_epochs_may_change(path, policy, lr, done, before, new):
    """A run may grow (or be cut, down to the epochs it has done) only where the learning rate of every
    epoch done, and the schedule's state that restore() loads, are what they would be in a run started
    with the new --epochs: then it continues as that run would."""
    if done >= new:
        fail(f"--resume --epochs {new}: the run at {path} has done {done} epochs already, and a run cannot "
             f"shrink (its last.pt holds the weights after epoch {done}); for --epochs {new}, start a new run")
    refusal = schedule_change_refusal(policy, lr, done, before, new)
    if refusal:
        fail(f"--resume --epochs {new}: {refusal}, so the run at {path} ({before} epochs, "
             f"{'all' if done == before else done} done) "
             f"cannot {'grow' if new > before else 'be cut'} to {new} epochs: start a new run")


def epochs_change_line(policy, done, before, new, eval_freq, old, target):
    """The log line of a run whose folder `old` became `target` as --epochs went from `before` to `new`."""
    note = (f"; its epoch {done} was validated as the last one, which a {new}-epoch run does not do, and "
            f"the random starts of that validation's PGD leave the random streams elsewhere: the epochs to "
            f"come will not equal those of a run started with --epochs {new}"
            if new > before and done == before and done % eval_freq else "")
    return (f"--epochs {new}: the run {'grows' if new > before else 'is cut'} from {before} to {new} epochs "
            f"(the {policy} schedule is the same for both over the {done} epochs done); {old} is now "
            f"{target}{note}")


def schedule_change_refusal(policy, lr, done, epochs, new_epochs):
    """Why a run of `done` epochs under the learning-rate policy `policy` cannot go on as a run of
    `new_epochs` epochs instead of `epochs` (None where it can): the learning rate of an epoch done, or the
    schedule's state that --resume restores, would not be that of a run started with new_epochs. Both
    schedules are built and stepped through the epochs done."""
    def stepped(total):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        scheduler = LEARNING_POLICIES[policy](optimizer, total)
        rates = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler stepped before optimizer.step()": nothing trains here
            for _ in range(done):
                rates.append(optimizer.param_groups[0]["lr"])
                scheduler.step()
        return rates, scheduler.state_dict()

    (rates, state), (new_rates, new_state) = stepped(epochs), stepped(new_epochs)
    for epoch, (rate, new_rate) in enumerate(zip(rates, new_rates), 1):
        if not math.isclose(rate, new_rate, rel_tol=1e-9):
            return (f"the {policy} schedule's learning rate depends on --epochs (epoch {epoch} ran at {rate:.4g} "
                    f"and would run at {new_rate:.4g} under --epochs {new_epochs})")
    differing = sorted(key for key in state.keys() | new_state.keys() if state.get(key) != new_state.get(key))
    if "_last_lr" in differing:  # the rate of the epoch to come: what a user can compare
        (rate,), (new_rate,) = state["_last_lr"], new_state["_last_lr"]
        return (f"the {policy} schedule's learning rate depends on --epochs (epoch {done + 1} would run at "
                f"{rate:.4g} under --epochs {epochs} and at {new_rate:.4g} under --epochs {new_epochs})")
    if differing:
        return (f"the state of the {policy} schedule, which --resume restores, depends on --epochs ("
                + ", ".join(f"{key} {state.get(key)} vs {new_state.get(key)}" for key in differing) + ")")
    return None


def arithmetic_changes(before, now):
    """What differs, among the device type and the CHANGE_THE_ARITHMETIC options, between `before` (the
    arguments last.pt was written with) and `now` (what is in force): ["bf16 autocast off (was on)", ...].
    Settings `before` does not record are not compared."""
    changes = []
    if before.get("device"):
        device_type, was = (str(device).split(":")[0] for device in (now["device"], before["device"]))
        if device_type != was:
            changes.append(f"device {device_type} (was {was})")
    for key, name in CHANGE_THE_ARITHMETIC.items():
        if key in before and bool(before[key]) != bool(now[key]):
            changes.append(f"{name} {'on' if now[key] else 'off'} (was {'on' if before[key] else 'off'})")
    return changes
