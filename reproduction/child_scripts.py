"""ALP.py and eval.py run as child processes of reproduce.py, their output (progress bars included) straight
to its own, stopped with it, and ALP.py's log followed as it grows."""
import ctypes
import os
import signal
import subprocess
import sys
import time

from interrupts import SIGNALS, Interrupted, interrupted_by
from utils import fail

from .folder import run_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the scripts are


def end_with_parent():
    """In the child, before it runs: the kernel sends it SIGTERM if reproduce.py dies (kill -9), so that it
    stops with its one line and frees its folder instead of running on unseen. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_script(script, argv, watch=None):
    """Run a script of this repository with this Python, its output (progress bars included) straight to
    reproduce.py's. watch(), if given, is called every half second while it runs. The child has a session of
    its own, so that a Ctrl-C reaches it once, from here. Returns its exit status; a stop of reproduce.py
    (Interrupted) is passed on to it and raised once it has ended."""
    command = [sys.executable, os.path.join(ROOT, script), *argv]
    print(f"$ {' '.join(command[1:])}", flush=True)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               start_new_session=True, preexec_fn=end_with_parent)
    try:
        while process.poll() is None:
            time.sleep(0.5)
            if watch:
                watch()
        if watch:
            watch()
        return process.returncode
    except Interrupted as stop:
        process.send_signal(stop.signum)
        process.wait()
        raise


def run_or_stop(script, argv, stage, watch=None):
    status = run_script(script, argv, watch)
    if status - 128 in SIGNALS:  # the child itself was stopped, and said so in its exit status
        raise interrupted_by(status - 128)
    if status != 0:
        fail(f"{stage} stopped: {script} ended with exit status {status} (its message above)",
             status=2 if status == 2 else 1)


class LogFollower:
    """Calls on_line(line) for each line that ALP.py adds to its run's log.txt (under `parent`) from now on."""

    def __init__(self, parent, on_line):
        self.parent, self.on_line = parent, on_line
        folder = run_folder(parent)
        self.path = os.path.join(folder, "log.txt") if folder else None
        self.offset = os.path.getsize(self.path) if self.path and os.path.isfile(self.path) else 0
        self.partial = ""

    def __call__(self):
        if self.path is None:
            folder = run_folder(self.parent)
            if folder is None:
                return  # ALP.py has not made its run folder yet
            self.path = os.path.join(folder, "log.txt")
        try:
            if os.path.getsize(self.path) < self.offset:  # a run started again writes its log anew
                self.offset, self.partial = 0, ""
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except OSError:
            return
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            self.on_line(line)
