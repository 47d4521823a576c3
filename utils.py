"""Plumbing every script shares: command lines that fail in one line, progress that is never silent for a
minute and never runs into a table, files written so that a kill or a full disk leaves no half-written one,
and content digests."""
import argparse
import difflib
import errno
import json
import os
import secrets
import sys
import time

import torch
from tqdm import tqdm

from interrupts import ending, holding


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default and keeps the description's own line breaks. On/off switches show
    none ("--no-amp (default: True)" would read as the opposite of what it means), and neither does a flag
    whose default is None: its help line says what happens without it."""

    def _get_help_string(self, action):
        return action.help if action.nargs == 0 or action.default is None else super()._get_help_string(action)


class CLIParser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (no usage dump) with exit status 2, naming the option a
    misspelt one most likely meant (--optimiser: did you mean --optimizer?)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def exit(self, status=0, message=None):
        ending(status)  # its line (an error, --help) is the script's last word: a stop now must not follow it
        super().exit(status, message)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{self.did_you_mean(message)}\n")

    def did_you_mean(self, message):
        """"; did you mean --x?" for each unrecognised option of `message` that is close to one of ours."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        options = [option for action in self._actions for option in action.option_strings
                   if option.startswith("--")]
        hints = []
        for word in message.removeprefix("unrecognized arguments:").split():
            name = word.split("=", 1)[0]
            if name.startswith("-"):
                close = difflib.get_close_matches("--" + name.lstrip("-"), options, n=1, cutoff=0.75)
                hints += [f"{name}: did you mean {close[0]}?"] if close else []
        return "; " + "; ".join(hints) if hints else ""


def fail(message, status=2):
    """Stop a script with one line on stderr: for bad input and data or checkpoints that cannot be used."""
    ending(status)
    sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {message}\n")  # one write: a stop cannot cut it
    sys.exit(status)


def short_reason(error):
    """An exception as one short clause: its type and the first non-empty line of its message (torchvision's
    download errors start with a line that ends in a colon and put the reason on the next)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " / ".join(lines[:3])
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def percent(fraction):
    """A share as the tables and checks print it: 0.1234 -> 12.34%."""
    return f"{100 * fraction:.2f}%"


def duration(seconds):
    """Seconds as people read a duration: 45 s, 3.5 min, 42 min, 4.2 h, 60 h."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 10 * 60:  # a decimal, so that the parts of a sum add up in the line
        return f"{seconds / 60:.1f} min"
    if seconds < 100 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 10 * 3600 else f"{seconds / 3600:.0f} h"


DURATION_PATTERN = r"\d+(?:\.\d+)? (?:s|min|h)"  # what duration() writes


def duration_seconds(text):
    """duration()'s text back to seconds: "45 s", "3.5 min", "4.2 h"."""
    value, unit = text.split()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


# --- files -------------------------------------------------------------------------------------------------

def write_atomically(path, data):
    """Write bytes or text to `path` through a temporary file beside it and a rename: a kill leaves the
    previous file intact, and two writers of one path (two evaluations, say) each rename a whole file of their
    own. Whatever stops the write (a full disk, Ctrl-C, SIGTERM) removes the temporary file before it goes on;
    an OSError (ENOSPC above all) gets the path it was meant for as its filename."""
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    try:
        with holding():  # a stop by interrupts.stop_in_one_line lets the clean-up below run
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            e.filename = path
        raise


def read_json(path):
    """A JSON file's content, or None where it is absent, not a regular file (a FIFO would block the read),
    unreadable, nested too deep to parse, or not a JSON object."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return content if isinstance(content, dict) else None


def describe_os_error(error):
    """One line for an OSError met while writing: a full disk is named as such."""
    if error.errno == errno.ENOSPC:
        return f"no space left on the device while writing {error.filename} (the temporary file was removed)"
    return f"cannot write {error.filename} ({error.strerror or short_reason(error)})"


def update_digest(sha, tensor):
    """Feed a tensor's dtype, shape and bytes to a hashlib object: what identifies data and checkpoints."""
    t = tensor.detach().cpu().contiguous()
    sha.update(f"{t.dtype}{tuple(t.shape)}".encode())
    sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def parse_number(text):
    """A number that may also be written as a fraction, as papers write ε: "8/255". ValueError otherwise."""
    numerator, _, denominator = str(text).partition("/")
    try:
        return float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number or fraction: {text}") from None


def number(text):
    """parse_number as an argparse type."""
    try:
        return parse_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or a fraction such as 8/255, not {text!r}") from None


def progress_wanted(flag):
    """--progress/--no-progress as given, else bars only for a person watching (stderr a terminal), none in a
    log file or CI (which get progress_meter's lines instead)."""
    return sys.stderr.isatty() if flag is None else flag


# --- progress ------------------------------------------------------------------------------------------------

# Without bars (a log file, CI, --no-progress), a loop says how far it is at the first step this long after
# its start or its last line. One loop follows another (training, then validation; one attack, then the next),
# so the longest silence is about two of these plus two steps, and steps (a batch, a unit of attacks) take a
# few seconds on a CPU: a line comes at least once a minute.
PROGRESS_LINE_SECONDS = 20


class ProgressLines:
    """The off-terminal form of a progress bar: a line on stderr once every PROGRESS_LINE_SECONDS or so, with
    what is done, the time spent and the time left. tqdm's update, set_postfix and close."""

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit, self.n, self.postfix = total, desc, unit, 0, ""
        self.started = self.said = time.monotonic()

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.said >= PROGRESS_LINE_SECONDS and self.n < self.total:
            self.said = now
            print(self.line(now - self.started), file=sys.stderr, flush=True)

    def line(self, elapsed):
        left = f", about {duration(elapsed / self.n * (self.total - self.n))} left" if self.n else ""
        postfix = f"; {self.postfix}" if self.postfix else ""
        return (f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%) in "
                f"{duration(elapsed)}{left}{postfix}")

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self):
        pass


def terminal_size():
    """(columns, rows) of stderr's terminal, 80 x 24 where it reports none (a pty with no window size, under
    `script`): tqdm draws nothing at a size of 0, only the line breaks around it."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return 80, 24
    return size.columns or 80, size.lines or 24


def progress_meter(total, desc, bars, unit="it"):
    """What shows a loop's progress: a tqdm bar on stderr where `bars` (progress_wanted) is True, that clears
    its line when closed so that nothing is left between the tables; ProgressLines where it is False; nothing
    where it is None, and in every process of a torch.distributed group but the first (one speaks for all)."""
    lead = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0
    if bars is None or not lead:
        return tqdm(total=total, disable=True)
    if bars:
        columns, rows = terminal_size()
        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, ncols=columns, nrows=rows)
    return ProgressLines(total, desc, unit)


def with_progress(iterable, total, desc, bars, unit="it"):
    """The items of `iterable`, each counted on a progress_meter once the loop's body is done with it."""
    meter = progress_meter(total, desc, bars, unit)
    try:
        for item in iterable:
            yield item
            meter.update(1)
    finally:
        meter.close()


def say(*args, file=None, **kwargs):
    """print(), with the progress bars on the terminal cleared first and drawn again below it: a line or a
    table never starts on the end of a bar."""
    with tqdm.external_write_mode(file=file):
        print(*args, file=file, **kwargs)
