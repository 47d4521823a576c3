"""A training run's folder: one run per folder, resumable after any kill, nothing half-written.

What a run folder holds (ALP.py writes it through RunFolder):
    run.lock        the PID of the process that runs it (an flock: a killed run's lock is stale by construction)
    args.json       {"runs": [{"args": ..., "in_force": ...}, ...]}: one record per start and per --resume
                    (and "epochs_changed" where --resume grew the run: see RunFolder._move_to_target)
    log.txt         what the run printed; metrics.csv: one row per epoch; curves.png: validation accuracies
    last.pt         the last epoch: weights, optimiser, scheduler, metrics, best figures, every process's RNG
    best_clean.pt, best_robust.pt, epoch_NNN.pt   weights only (checkpoints.py says what a checkpoint is)
Every file is written through a temporary file and a rename, so a kill leaves the previous one; a full disk
or a folder turned read-only ends the run with one line (exit status 2). A Ctrl-C or SIGTERM outside the
training loop's own handling ends it with one line saying how to continue (interrupts.stop_in_one_line).

This module is the folder's lifecycle; what --resume allows is in training.resume, the lock in
training.lock, the files' formats in training.records.
"""
import functools
import os
import sys

from checkpoints import CheckpointError, load_checkpoint, other_checkpoints, save_checkpoint
from evaluation.checks import constant_predictor_check
from interrupts import say_on_stop
from utils import describe_os_error, fail, percent, say
from weights import put_weights

from . import resume as policy
from .lock import RunLock, RunLockHeld, lock_holder
from .records import (BEST, append_start, best_file_name, epoch_line, first_args, logged_epoch, mark_epochs_changed,
                      plot_curves, recorded_data_digest, set_rng_state, write_csv)
from .validation import validation_name


def console_gone(stream):
    """After a broken pipe on `stream`: what is written to it from now on goes nowhere, so that neither a
    later line nor the interpreter's last flush raises again (log.txt keeps every line)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):  # not a file descriptor (a notebook's or a test's stream)
        pass


def file_identity(path):
    """What tells one version of a file from the next that write_atomically puts there."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


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
        ... run.save_epoch(...) each epoch, run.finish(...) at the end; run.release() whatever ends it
    """

    def __init__(self, path, args, is_main=True):
        self.args, self.is_main = dict(args), is_main
        self._at(path)
        self.target = path  # the run's folder once take() is done: self.path is its folder now, another
        # one's (named for the old count) while --resume changes the run's --epochs, until take() renames it
        self.epochs_before = None  # the epoch count a run had before this --resume changed it
        self.metrics, self.best = [], {key: -1.0 for key in BEST}
        self.lock, self._log_file = None, None

    @property
    def method(self):
        """The script's method (ALP, CLP, LSQ): what its epoch lines' training accuracy is measured on."""
        return self.args.get("method", "ALP")

    def _at(self, path):
        self.path, self.last = path, os.path.join(path, "last.pt")

    def file(self, name):
        return os.path.join(self.path, name)

    # --- before training ---------------------------------------------------------------------------------------

    def open(self, resume):
        """Refuses what the folder does not allow. A new run needs a free folder without a run in it (it is
        created by take(), once the data has loaded). --resume reads last.pt (once) and checks it and the
        arguments against the run's own record, and the schedule where --epochs changes (training.resume),
        before it takes the lock: a refusal leaves every byte of the folder as it was. Returns last.pt's
        state (None for a new run)."""
        if self.is_main:
            self._refuse_if_locked()
        if not resume:
            if self.is_main:
                self._refuse_if_taken()
            return None
        if not os.path.isfile(self.last):
            folder, self.epochs_before = policy.run_with_other_epochs(self.path, self.args.get("epochs"))
            self._at(folder)
        read = file_identity(self.last)
        try:
            state = load_checkpoint(self.last)
        except CheckpointError as e:
            fail(str(e))
        policy.refuse_incomplete_checkpoint(state, self.last, other_checkpoints(self.last))
        recorded = self.first_args() or dict(state["meta"].get("args") or {})  # args.json, else last.pt's own
        policy.refuse_changed_arguments(recorded, self.args, self.file("args.json"))
        policy.refuse_another_runs_checkpoint(state["meta"], self.args, recorded_data_digest(self.file("args.json")),
                                              self.last, self.file("args.json"))
        grown_already = (state["meta"].get("args") or {}).get("epochs") == self.args["epochs"]
        if self.epochs_before is None:
            policy.refuse_a_grown_run_under_its_old_count(state["meta"], state["epoch"], self.args["epochs"],
                                                          self.last)
        elif not grown_already:  # a grow stopped after its first new epoch was saved is past this check
            policy.refuse_unless_the_epochs_may_change(self.path, self.args["learning_policy"], self.args["lr"],
                                                       state["epoch"], self.epochs_before, self.args["epochs"])
        if self.is_main:
            self._lock()
            if file_identity(self.last) != read:
                fail(f"{self.last} changed while it was read (another process?): run the command again")
            if self.epochs_before is not None and grown_already:
                self._move_to_target(state["epoch"] - 1)
        return state

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
        return first_args(self.file("args.json"))

    @_one_line_on_write_errors
    def take(self, state, in_force, epochs):
        """For a resumed run, check that its last.pt fits the data and processes (in_force says what they
        are) before anything is written. Create and lock the folder for a new run (state None; a resumed run
        holds its lock since open()), re-check it under the lock (another run may have taken it while the
        data loaded), remove the temporary files a kill left, append this start to args.json, open the log,
        and for a resumed run repair what a kill left and warn if it computes otherwise than its last epoch
        did. (A run whose --epochs changed takes its new name once its first new epoch is saved.)"""
        resume = state is not None
        if resume:
            policy.refuse_unless_it_fits(state, self.last, in_force["data_digest"], in_force["world_size"])
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
        append_start(self.file("args.json"), self.args, in_force, resume)
        self._log_file = open(self.file("log.txt"), "a")
        if resume:
            self._repair_after_kill(state["metrics"], epochs)
            changes = policy.arithmetic_changes(state["meta"].get("args") or {}, in_force)
            if changes:
                self.warn(f"this --resume computes otherwise than the epochs in {self.last}: {', '.join(changes)}; "
                          f"the resumed run will not equal an uninterrupted one")

    def _remove_temporary_files(self):
        """What a kill in the middle of a write left (an interrupted write removes its own)."""
        for name in os.listdir(self.path):
            if name.endswith(".tmp"):
                os.remove(self.file(name))

    @_one_line_on_write_errors
    def _move_to_target(self, done):
        """Rename the folder of a run whose --epochs changed to the name of its new epoch count, once the
        first epoch of the new count is saved (open() finishes it where a stop came in between): a stop
        before then leaves the run as it was, under its old name and count. The change is recorded first,
        once whatever the stops: the last args.json record gets "epochs_changed", log.txt its line."""
        old = self.path
        mark_epochs_changed(self.file("args.json"), {"from": self.epochs_before, "to": self.args["epochs"],
                                                     "folder_was": old})
        line = policy.epochs_change_line(self.args["learning_policy"], done, self.epochs_before,
                                         self.args["epochs"], self.args.get("eval_freq") or 1, old, self.target)
        if line in self._logged():  # by a run stopped before its rename
            print(line, flush=True)
        elif self._log_file is not None:
            self.log(line)
        else:  # open() finishing the rename of a run stopped before it: the log is not open yet
            with open(self.file("log.txt"), "a") as f:
                f.write(line + "\n")
            print(line, flush=True)
        try:
            os.rename(old, self.target)
        except OSError as e:
            fail(f"cannot rename {old} to {self.target} ({e.strerror or e}); the run is there under its old name: "
                 f"the same command finishes the rename")
        self._at(self.target)
        self.epochs_before = None

    def _logged(self):
        try:
            with open(self.file("log.txt")) as f:
                return set(f.read().splitlines())
        except FileNotFoundError:
            return set()

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
                         f"{percent(self.best[key])})")
                self.best[key] = -1.0
        return state["epoch"]

    def _repair_after_kill(self, metrics, epochs):
        """A kill between the last.pt rename and the writes after it leaves metrics.csv and log.txt an epoch
        short: metrics.csv is rewritten from last.pt's metrics, missing epoch lines are added to the log."""
        if metrics:
            write_csv(metrics, self.file("metrics.csv"))
        with open(self.file("log.txt")) as f:
            logged = {logged_epoch(line) for line in f.read().splitlines()}
        for row in metrics:
            if row["epoch"] not in logged:
                self.log(f"(epoch {row['epoch']}'s line, restored from last.pt: the run was stopped before it "
                         f"was logged)")
                self.log(epoch_line(row, epochs, self.method))

    # --- during training ---------------------------------------------------------------------------------------

    def log(self, line, file=None):
        """Printed (to stdout, or `file`) and appended to log.txt (main process only)."""
        if not self.is_main:
            return
        try:
            say(line, file=file or sys.stdout, flush=True)  # above any progress bar
        except BrokenPipeError:  # `ALP.py ... | head`, a pager quit: the console is gone, the run goes on
            console_gone(file or sys.stdout)
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
        self.log(epoch_line(row, epochs, self.method))
        if self.target != self.path:  # the first epoch of a run whose --epochs changed: now it has the new name
            self._move_to_target(row["epoch"] - 1)

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
        plot_curves(self.metrics, self.file("curves.png"), title=title,
                    robust_label=validation_name(self.args["dataset"]), method=self.method)
        written = [key for key in BEST if self.best[key] >= 0 and os.path.isfile(self.file(best_file_name(key)))]
        if written:
            figures = ", ".join(f"best {key.split('_')[0]} {percent(self.best[key])} ({best_file_name(key)})"
                                for key in written)
            self.log(f"done: {figures} (PGD on the validation split); checkpoints in {self.path}"
                     + (f"; warning: {note}" if note else ""))
        else:
            self.log(f"done: no validated epoch gave figures worth keeping as best_*.pt (none validated, or the "
                     f"model predicted one class); last.pt in {self.path}")
        self.release()

    def release(self):
        """The lock (and the log) let go, whatever ended the run: a process that goes on after it, such as a
        notebook's or a test's, may then start or resume a run in this folder. Safe to call more than once."""
        say_on_stop(None)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
