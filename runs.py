"""A training run's folder: one run per folder, resumable after any kill, nothing half-written.

What a run folder holds (ALP.py writes it through RunFolder):
    run.lock        the PID of the process that runs it (an flock: a killed run's lock is stale by construction)
    args.json       {"runs": [{"args": ..., "in_force": ...}, ...]}: one record per start and per --resume
                    (and "epochs_changed" where --resume grew the run: see RunFolder.open)
    log.txt         what the run printed; metrics.csv: one row per epoch; curves.png: validation accuracies
    last.pt         the last epoch: weights, optimiser, scheduler, metrics, best figures, every process's RNG
    best_clean.pt, best_robust.pt, epoch_NNN.pt   weights only (checkpoints.py says what a checkpoint is)
Every file is written through a temporary file and a rename, so a kill leaves the previous one; a full disk
or a folder turned read-only ends the run with one line (exit status 2). A Ctrl-C or SIGTERM outside the
training loop's own handling ends it with one line saying how to continue (interrupts.stop_in_one_line).
"""
import csv
import datetime
import functools
import io
import json
import math
import os
import re
import sys
import textwrap
import warnings

import torch

from checkpoints import CheckpointError, load_checkpoint, other_checkpoints, save_checkpoint
from evaluation import constant_predictor_check
from interrupts import say_on_stop
from optimization import LEARNING_POLICIES
from utils import describe_os_error, fail, write_atomically
from weights import put_weights

# Arguments that may change between a run and its --resume: where things are and how fast they run. Every
# other argument must be what the run started with, or the resumed run would be another run. --epochs is in
# the folder's name; it may change where the learning-rate schedule allows (see RunFolder.open).
MAY_CHANGE_ON_RESUME = {"resume", "progress", "data_root", "out", "device", "amp", "channels_last",
                        "cudnn_benchmark", "compile", "cuda_graph", "epochs"}
# The speed options above that change the arithmetic (beside the device type): a run may continue with
# other ones (moved from a CPU to a GPU, say), with a warning that it will not equal an uninterrupted run.
# cudnn.benchmark picks among kernels that differ run to run anyway, and --cuda-graph replays the eager step.
CHANGE_THE_ARITHMETIC = {"amp": "bf16 autocast", "channels_last": "channels_last", "compile": "torch.compile"}
RESUME_KEYS = ("optimizer", "scheduler", "metrics", "best", "rng", "epoch")  # what last.pt holds beyond weights
BEST = ("clean_accuracy", "robust_accuracy")  # a best_*.pt file per figure


def _one_line_on_write_errors(method):
    """A full disk (or a folder that turned read-only) while writing run files: one line, exit status 2.
    Checkpoints and metrics.csv are written through a temporary file, so the previous ones stay."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except OSError as e:
            fail(describe_os_error(e))
    return wrapper


class RunFolder:
    """The folder of one run, seen from one process of it: only the main process (rank 0) writes, and only
    it holds the lock. Bad states end the script with one line (utils.fail), never a traceback.

        run = RunFolder(path, vars(args), is_main)
        state = run.open(resume)        # before the data loads: refusals cost nothing
        run.take(...)                   # after the data loads: create, lock, start the records
        start_epoch = run.restore(state, ...) if resume else 0
        ... run.save_epoch(...) each epoch, run.finish(...) at the end
    """

    def __init__(self, path, args, is_main=True):
        self.args, self.is_main = dict(args), is_main
        self._at(path)
        self.target = path  # the run's folder once take() is done: self.path is its folder now, another
        # one's (named for the old count) while --resume changes the run's --epochs, until take() renames it
        self.epochs_before = None  # the epoch count a run had before this --resume changed it
        self.metrics, self.best = [], {key: -1.0 for key in BEST}
        self.lock, self._log_file = None, None

    def _at(self, path):
        self.path, self.last = path, os.path.join(path, "last.pt")

    def file(self, name):
        return os.path.join(self.path, name)

    # --- before training ---------------------------------------------------------------------------------------

    def open(self, resume):
        """Refuses what the folder does not allow. A new run needs a free folder without a run in it (it is
        created by take(), once the data has loaded). --resume takes the lock at once, reads last.pt (once)
        and checks it and the arguments against the run's own record, and the schedule where --epochs
        changes; returns its state (None for a new run)."""
        if self.is_main:
            self._refuse_if_locked()
        if not resume:
            if self.is_main:
                self._refuse_if_taken()
            return None
        if not os.path.isfile(self.last):
            self._turn_to_the_run_with_other_epochs()
        if self.is_main:
            self._lock()
        try:
            state = load_checkpoint(self.last)
        except CheckpointError as e:
            fail(str(e))
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            fail(f"{self.last} cannot be resumed: it holds no {', '.join(missing)} (a best_*.pt or epoch_*.pt "
                 f"copied over it?); {other_checkpoints(self.last)}")
        recorded = self.first_args() or dict(state["meta"].get("args") or {})  # args.json, else last.pt's own
        changed = sorted(k for k in recorded if k in self.args and k not in MAY_CHANGE_ON_RESUME
                         and recorded[k] != self.args[k])
        if changed:
            fail(f"--resume: {', '.join(f'--{k} {self.args[k]} (the run has {recorded[k]})' for k in changed)};"
                 f" resume with the run's own arguments (see {self.file('args.json')})")
        if self.epochs_before is not None:
            self._refuse_unless_the_epochs_may_change(state["epoch"])
        return state

    def _turn_to_the_run_with_other_epochs(self):
        """--resume where the folder holds no last.pt. Often a run asked for another --epochs, whose folder has
        another name: it continues in its own folder, renamed by take(), if open() finds that the schedule
        allows it. Otherwise the run never started, or stopped in its first epoch: one line says so."""
        new = self.args.get("epochs")
        others = self._runs_with_other_epochs()
        if not others:
            reason = ("the run stopped before its first epoch ended: start it again without --resume"
                      if os.path.isdir(self.path) else "no run was started with these arguments: start it "
                                                        "without --resume")
            fail(f"--resume: nothing to resume, no checkpoint at {self.last} ({reason})")
        if len(others) > 1:
            fail(f"--resume --epochs {new}: the runs with these arguments and other --epochs are "
                 f"{', '.join(folder for folder, _ in others)}; resume one of them with its own --epochs")
        (folder, epochs), = others
        if os.path.exists(self.path):
            fail(f"--resume --epochs {new}: {self.path} is there without a last.pt (a run with --epochs {new} "
                 f"that stopped in its first epoch), so the run at {folder} cannot take that name: remove it "
                 f"to continue that run with --epochs {new}, or start it again without --resume")
        self.epochs_before = epochs
        self._at(folder)

    def _runs_with_other_epochs(self):
        """[(folder, its --epochs)] of the runs beside this folder whose names differ only in --epochs and
        that hold a last.pt."""
        parent, name = os.path.split(self.path)
        epochs = f"-ep{self.args.get('epochs')}-"
        if epochs not in name or not os.path.isdir(parent or "."):
            return []
        stem, tail = name.split(epochs, 1)
        pattern = re.compile(re.escape(stem) + r"-ep(\d+)-" + re.escape(tail))
        return [(os.path.join(parent, other), int(match.group(1))) for other in sorted(os.listdir(parent or "."))
                if other != name and (match := pattern.fullmatch(other))
                and os.path.isfile(os.path.join(parent, other, "last.pt"))]

    def _refuse_unless_the_epochs_may_change(self, done):
        """A run may grow (or be cut, down to the epochs it has done) only where the learning rate of every
        epoch done, and the schedule's state that restore() loads, are what they would be in a run started
        with the new --epochs: then it continues as that run would."""
        before, new = self.epochs_before, self.args["epochs"]
        if done >= new:
            fail(f"--resume --epochs {new}: the run at {self.path} has done {done} epochs already, and a run "
                 f"cannot shrink (its last.pt holds the weights after epoch {done}); for --epochs {new}, start a "
                 f"new run")
        refusal = schedule_change_refusal(self.args["learning_policy"], self.args["lr"], done, before, new)
        if refusal:
            fail(f"--resume --epochs {new}: {refusal}, so the run at {self.path} ({before} epochs, "
                 f"{'all' if done == before else done} done) "
                 f"cannot {'grow' if new > before else 'be cut'} to {new} epochs: start a new run")

    def _refuse_if_taken(self):
        if os.path.exists(self.last):
            fail(f"{self.path} already holds a run: pass --resume to continue it, or remove the folder")

    def _refuse_if_locked(self):
        holder = lock_holder(self.path)
        if holder is not None:
            self._in_use(holder)

    def _in_use(self, pid):
        fail(f"{self.path} is in use by a running process (PID {pid}); wait for it to end, or stop it")

    def _lock(self):
        try:
            self.lock = RunLock(self.path)
        except RunLockHeld as held:
            self._in_use(held.args[0])
        except OSError as e:
            what = "lock" if os.path.isdir(self.path) else "create"
            fail(f"cannot {what} the run folder {self.path} ({e.strerror or e}): it must be writable")

    def first_args(self):
        """The arguments the run started with, from its args.json ({} without a readable one)."""
        try:
            with open(self.file("args.json")) as f:
                record = json.load(f)
            return dict(record["runs"][0]["args"] if "runs" in record else record)  # older: the bare arguments
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return {}

    @_one_line_on_write_errors
    def take(self, state, in_force, epochs):
        """For a resumed run, check that its last.pt fits the data and processes (in_force says what they
        are) before anything is written. Create and lock the folder for a new run (state None; a resumed run
        holds its lock since open()), re-check it under the lock (another run may have taken it while the
        data loaded), remove the temporary files a kill left, append this start to args.json, open the log,
        rename the folder of a run whose --epochs changes, and for a resumed run repair what a kill left and
        warn if it computes otherwise than its last epoch did."""
        resume = state is not None
        if resume:
            self._refuse_unless_it_fits(state, in_force["data_digest"], in_force["world_size"])
        if not self.is_main:
            self._at(self.target)  # rank 0 renames it; every process has read last.pt (load_data's barrier)
            return
        say_on_stop(self.how_to_continue)
        if not resume:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as e:
                fail(f"cannot create the run folder {self.path} ({e.strerror or e})")
            self._lock()
            self._refuse_if_taken()
        self._remove_temporary_files()
        self._write_args(resume, in_force)
        self._log_file = open(self.file("log.txt"), "a")
        if self.target != self.path:
            self._move_to_target(state["epoch"])
        if resume:
            self._repair_after_kill(state["metrics"], epochs)
            changes = arithmetic_changes(state["meta"].get("args") or {}, in_force)
            if changes:
                self.warn(f"this --resume computes otherwise than the epochs in {self.last}: {', '.join(changes)}; "
                          f"the resumed run will not equal an uninterrupted one")

    def _refuse_unless_it_fits(self, state, data_id, world_size):
        trained_on = state["meta"].get("data_digest")
        if trained_on is not None and trained_on != data_id:
            fail(f"--resume: the data loaded now differs from the data {self.last} was trained on (digest "
                 f"{data_id[:12]} vs {trained_on[:12]}): same data set files, --subset, --ratio and --seed?")
        if len(state["rng"]) != world_size:
            fail(f"--resume: {self.last} was written by {len(state['rng'])} processes; resume it with as many")

    def _remove_temporary_files(self):
        """What a kill in the middle of a write left (an interrupted write removes its own)."""
        for name in os.listdir(self.path):
            if name.endswith(".tmp"):
                os.remove(self.file(name))

    def _move_to_target(self, done):
        """Rename the folder of a run whose --epochs changed to the name of its new epoch count, under its
        lock: args.json already records the change, so a kill before the rename leaves the run as it was
        (the same command does it again), and one after leaves it under its new name."""
        before, new = self.epochs_before, self.args["epochs"]
        old = self.path
        try:
            os.rename(old, self.target)
        except OSError as e:
            fail(f"cannot rename {old} to {self.target} ({e.strerror or e}); the run is unchanged there")
        self._at(self.target)
        every = self.args.get("eval_freq") or 1
        note = (f"; its epoch {done} was validated as the last one, which a {new}-epoch run does not do, and "
                f"the random starts of that validation's PGD leave the random streams elsewhere: the epochs to "
                f"come will not equal those of a run started with --epochs {new}"
                if new > before and done == before and done % every else "")
        self.log(f"--epochs {new}: the run {'grows' if new > before else 'is cut'} from {before} to {new} epochs "
                 f"(the {self.args['learning_policy']} schedule is the same for both over the {done} epochs "
                 f"done); {old} is now {self.target}{note}")

    def _write_args(self, resume, in_force):
        path = self.file("args.json")
        runs = []
        if resume and os.path.isfile(path):
            try:
                with open(path) as f:
                    old = json.load(f)
                runs = old["runs"] if "runs" in old else [{"args": old}]
            except (OSError, ValueError, KeyError, TypeError):
                runs = []  # unreadable: last.pt is what counts; the record starts again
        record = {"args": self.args, "in_force": in_force}
        if self.epochs_before is not None:
            record["epochs_changed"] = {"from": self.epochs_before, "to": self.args["epochs"],
                                        "folder_was": self.path}
        runs.append(record)
        write_atomically(path, json.dumps({"runs": runs}, indent=2) + "\n")

    def restore(self, state, rank, model, optimizer, scheduler):
        """The run's last epoch from its last.pt state (take() checked that it fits): weights, optimiser,
        schedule, metrics, best figures, and this process's random streams. Returns the number of epochs
        done."""
        try:
            put_weights(model, state["model"], self.last)  # names the keys that do not fit, if any
        except CheckpointError as e:
            fail(f"--resume: {e}")
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            fail(f"--resume: {self.last} does not fit this model and optimiser ({str(e).splitlines()[0]})")
        set_rng_state(state["rng"][rank])
        self.metrics, self.best = list(state["metrics"]), {**self.best, **state["best"]}
        for key in BEST:
            name = best_file_name(key)
            if self.is_main and self.best[key] >= 0 and not os.path.isfile(self.file(name)):
                self.log(f"{name} is gone: the next validated epoch writes it anew (it held "
                         f"{100 * self.best[key]:.2f}%)")
                self.best[key] = -1.0
        return state["epoch"]

    def _repair_after_kill(self, metrics, epochs):
        """A kill between the last.pt rename and the writes after it leaves metrics.csv and log.txt an epoch
        short: metrics.csv is rewritten from last.pt's metrics, missing epoch lines are added to the log."""
        if metrics:
            write_csv(metrics, self.file("metrics.csv"))
        with open(self.file("log.txt")) as f:
            logged = {without_epoch_count(line) for line in f.read().splitlines()}
        for row in metrics:
            line = epoch_line(row, epochs)
            if without_epoch_count(line) not in logged:  # logged as "epoch 2/2" by a run grown since
                self.log(f"(epoch {row['epoch']}'s line, restored from last.pt: the run was stopped before it "
                         f"was logged)")
                self.log(line)

    # --- during training ---------------------------------------------------------------------------------------

    def log(self, line, file=None):
        """Printed (to stdout, or `file`) and appended to log.txt (main process only)."""
        if not self.is_main:
            return
        print(line, file=file or sys.stdout, flush=True)
        if self._log_file is not None:
            try:
                self._log_file.write(line + "\n")
                self._log_file.flush()
            except OSError as e:
                e.filename = self.file("log.txt")
                fail(describe_os_error(e))

    def warn(self, line):
        """`warning: line` on stderr and in log.txt (main process only)."""
        self.log(f"warning: {line}", file=sys.stderr)

    @_one_line_on_write_errors
    def save_epoch(self, model, optimizer, scheduler, meta, row, rng_states, epochs, snapshot_every,
                   class_counts=None):
        """The epoch's checkpoints (best, snapshot, last), metrics.csv and log line. class_counts: how many
        validation images the model gave each class; a model that gives one class nearly all of them gets a
        warning, and its figures, which say nothing yet, never make a best_*.pt."""
        self.metrics.append(row)
        if not self.is_main:
            return
        counts_as_best = True
        if class_counts is not None:
            one_class = constant_predictor_check(class_counts)
            counts_as_best = not one_class.flagged
            if one_class.flagged:
                self.log(f"warning: after epoch {row['epoch']} {one_class.message}; its figures make no "
                         f"best_*.pt (more epochs or images needed?)")
        weights = {"model": model.state_dict(), "meta": meta, "epoch": row["epoch"],
                   "clean_accuracy": row["clean_accuracy"], "robust_accuracy": row["robust_accuracy"]}
        if row["clean_accuracy"] is not None and counts_as_best:
            for key in BEST:
                if row[key] > self.best[key]:
                    self.best[key] = row[key]
                    save_checkpoint(weights, self.file(best_file_name(key)))
        if row["epoch"] % snapshot_every == 0:
            save_checkpoint(weights, self.file(f"epoch_{row['epoch']:03d}.pt"))
        save_checkpoint({**weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "metrics": self.metrics, "best": self.best, "rng": rng_states}, self.last)
        write_csv(self.metrics, self.file("metrics.csv"))
        self.log(epoch_line(row, epochs))

    def kept(self):
        """What a run stopped now leaves to continue from."""
        return f"last good checkpoint: {self.last if os.path.exists(self.last) else 'none written yet'}"

    def how_to_continue(self):
        """What a run interrupted now leaves, and the command that continues it."""
        if os.path.exists(self.last):
            return f"{self.kept()}: the same command with --resume continues from there"
        return "no checkpoint written yet: the same command without --resume starts the run again"

    # --- after training ----------------------------------------------------------------------------------------

    @_one_line_on_write_errors
    def finish(self, title, note=None):
        """curves.png, the closing line (ending with `note`, a warning about the figures, if any), and the lock
        released."""
        if not self.is_main:
            return
        plot_curves(self.metrics, self.file("curves.png"), title=title)
        written = [key for key in BEST if self.best[key] >= 0 and os.path.isfile(self.file(best_file_name(key)))]
        if written:
            figures = ", ".join(f"best {key.split('_')[0]} {100 * self.best[key]:.2f}% ({best_file_name(key)})"
                                for key in written)
            self.log(f"done: {figures} (PGD on the validation split); checkpoints in {self.path}"
                     + (f"; warning: {note}" if note else ""))
        else:
            self.log(f"done: no validated epoch gave figures worth keeping as best_*.pt (none validated, or the "
                     f"model predicted one class); last.pt in {self.path}")
        self.release()

    def release(self):
        """The lock (and the log) let go: for a process that goes on after the run, such as a notebook's."""
        say_on_stop(None)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def run_name(args):
    """A run folder's name, from the run's arguments (a dict): data set, model and the hyper-parameters that
    tell runs apart. The others that change the result (momentum, betas, --eval-freq, ...) are checked
    against the run's record on --resume."""
    name = (f"{args['dataset']}-{args['model']}-ALP-lev{args['leverage']:g}-{args['attack']}"
            f"-eps{args['epsilon']:.4g}-steps{args['steps']}-step{args['stepsize']:.4g}-{args['optimizer']}"
            f"-lr{args['lr']:g}-wd{args['weight_decay']:g}-{args['learning_policy']}-ep{args['epochs']}"
            f"-b{args['batch_size']}-seed{args['seed']}")
    return (name + (f"-ratio{args['ratio']:g}" if args["ratio"] else "")
            + (f"-subset{args['subset']}" if args["subset"] else ""))


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


def best_file_name(key):
    return f"best_{key.split('_')[0]}.pt"


def epoch_line(row, epochs):
    accuracies = (f" | clean {100 * row['clean_accuracy']:.2f}% robust {100 * row['robust_accuracy']:.2f}%"
                  if row["clean_accuracy"] is not None else "")
    return (f"epoch {row['epoch']:3d}/{epochs} | lr {row['lr']:.4g} | loss {row['train_loss']:.4f} | "
            f"adv acc {100 * row['train_adv_accuracy']:.2f}%{accuracies} | {row['seconds']:.1f}s"
            + (f" (validation {row['validation_seconds']:.1f}s)" if row.get("validation_seconds") else ""))


def without_epoch_count(line):
    """An epoch line without its "/EPOCHS", which a run whose --epochs changed logged with another count."""
    return re.sub(r"^(epoch +\d+)/\d+ ", r"\1 ", line)


def in_force(device, world_size, amp, channels_last, cudnn_benchmark, compiled, data_id):
    """What actually ran, after the device checks: args.json records it beside the command line."""
    return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": str(device), "world_size": world_size, "torch": torch.__version__, "amp": amp,
            "channels_last": channels_last, "cudnn_benchmark": cudnn_benchmark, "compile": compiled,
            "data_digest": data_id, "pid": os.getpid()}


# --- the lock ----------------------------------------------------------------------------------------------------

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
    """The PID (as text) of a live process holding `folder`'s run lock, or None. A lock file that cannot be
    opened (a read-only folder) says nothing about a holder: None, and taking the lock reports the folder."""
    if not os.path.isfile(os.path.join(folder, RunLock.NAME)):
        return None
    try:
        RunLock(folder).release()
    except RunLockHeld as held:
        return held.args[0]
    except OSError:
        return None
    return None


# --- random-number state ---------------------------------------------------------------------------------------

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
    epochs = [r["epoch"] for r in rows]
    if len(set(epochs)) == 1:  # one point: integer ticks around it, not 0.945 ... 1.050
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
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
