"""Ctrl-C and SIGTERM end a script in one line with the shell's exit status (130, 143), never a traceback.

No torch here, nor anything that imports it: the scripts install stop_in_one_line() before their heavy
imports, since torch takes seconds to import and a Ctrl-C then would print a page of import machinery.

    if __name__ == "__main__":
        stop_in_one_line()          # the first line of a script, before it imports torch
    ...
    with interruptible():           # where the script has its own line to say (which epoch, how to go on)
        ...
"""
import os
import signal
import sys
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM inside `interruptible()`: str() names which, signum is the signal, exit_status the
    shell's for it."""

    @property
    def signum(self):
        return signal.SIGTERM if str(self) == "SIGTERM" else signal.SIGINT

    @property
    def exit_status(self):
        return 128 + self.signum


def interrupted_by(signum):
    return Interrupted("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")


@contextmanager
def interruptible():
    """Ctrl-C and SIGTERM (a cluster's pre-emption, `kill`) raise Interrupted inside the block, so that a
    script can end with one line saying how to continue instead of a traceback."""
    def raise_interrupted(signum, frame):
        global _stopping
        if _ending is not None:  # the script has said its last line: one more would contradict it
            _exit_now(_ending)
        _stopping = True  # a second signal, once this block is left (an atexit callback), ends it at once
        raise interrupted_by(signum)

    global _ending
    _ending = None  # work goes on, so an earlier ending's SystemExit was caught (a test, a Python caller)
    previous = {signum: signal.signal(signum, raise_interrupted) for signum in SIGNALS}
    try:
        yield
    except KeyboardInterrupt:  # raised by code rather than by the signal
        raise Interrupted("Ctrl-C") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# What a stop outside every interruptible() block leaves, as a clause, once the script has something to say
# (training.run_folder.RunFolder says how to continue the run it holds); None: the bare line.
_describe_what_is_left = None
_holding = 0  # how many holding() blocks are open
_stopping = False
_ending = None  # the exit status the script is ending with, once it has said its last line (ending())


def stop_in_one_line():
    """From now on, a Ctrl-C or SIGTERM that lands outside every interruptible() block ends the script with
    `SCRIPT: stopped by Ctrl-C` (and what say_on_stop() registered) on stderr, and exit status 130 or 143.
    Until the script holds something to clean up (say_on_stop() registered a clause, or a holding() block
    is open), and whenever the signal lands inside an import, the process ends at once (os._exit): nothing
    is lost, and no import machinery or C++ frame can catch the exit and carry on. Otherwise the exit is a
    SystemExit, so that `finally` blocks and write_atomically's clean-up run. A second signal, or one that
    lands after the script's own code has ended (in an atexit callback), ends the process at once and
    silently. Under torchrun only rank 0 prints."""
    global _ending, _stopping
    _ending, _stopping = None, False
    for signum in SIGNALS:
        signal.signal(signum, _stop)


def ending(status):
    """The script has decided to end with `status` and is about to say why (an error line, --help): a stop
    that lands from now on ends the process at once, silently, with that status, so that the user never
    reads both the script's last word and a stop. Until the next interruptible() block: a caller that
    catches the SystemExit and works on gets its stops back."""
    global _ending
    _ending = status


def say_on_stop(describe):
    """describe(): the clause a stop by stop_in_one_line adds to its line from now on (None: none)."""
    global _describe_what_is_left
    _describe_what_is_left = describe


@contextmanager
def holding():
    """A stretch that leaves something to clean up if it is cut short (a temporary file): a stop by
    stop_in_one_line inside it takes the SystemExit path."""
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1


def _frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def _in_main_program(frame):
    """Whether the script's own code is running below `frame` (not an atexit callback or a finaliser)."""
    return any(f.f_code.co_name == "<module>" and f.f_globals.get("__name__") == "__main__" for f in _frames(frame))


def _importing(frame):
    return any(f.f_code.co_filename.startswith("<frozen importlib") for f in _frames(frame))


def _exit_now(status):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # the signal may have landed inside a write to it
            pass
    os._exit(status)


def _stop(signum, frame):
    global _stopping
    stop = interrupted_by(signum)
    if _ending is not None:
        _exit_now(_ending)
    if _stopping or not _in_main_program(frame):  # a second Ctrl-C, or the script's code has ended: no more
        _exit_now(stop.exit_status)                # clean-up, and no line (its own last word stands)
    _stopping = True
    if os.environ.get("RANK", "0") == "0":
        clause = _describe_what_is_left() if _describe_what_is_left is not None else None
        line = f"{os.path.basename(sys.argv[0])}: stopped by {stop}" + (f"; {clause}" if clause else "")
        os.write(2, (line + "\n").encode())  # not print(): the signal may have landed inside one
    if (_describe_what_is_left is None and not _holding) or _importing(frame):
        _exit_now(stop.exit_status)
    raise SystemExit(stop.exit_status)
