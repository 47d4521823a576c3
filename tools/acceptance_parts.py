"""Running the acceptance run's parts as subprocesses, each against its deadline, with every command and its
output in acceptance.log and the report rewritten after each part."""
import os
import shutil
import signal
import subprocess
import time
from contextlib import nullcontext

from acceptance_report import write_report


class Parts:
    """Runs subprocesses against the deadlines, keeps their output in acceptance.log, and rewrites the
    report after each part. shares: each part's share of the budget, in run order; a part's deadline is the
    sum of the shares up to its own (of the chosen parts), so a part that ends early leaves its time to the
    later ones."""

    def __init__(self, out_dir, budget, report, shares, parts=None, cwd=None):
        self.out_dir, self.report, self.cwd = out_dir, report, cwd
        self.started = time.monotonic()
        self.deadlines, total = {}, 0.0
        chosen = {name: share for name, share in shares.items() if name in (parts or shares)}
        for name, share in chosen.items():
            total += share
            self.deadlines[name] = self.started + total / sum(chosen.values()) * budget
        self.log = open(os.path.join(out_dir, "acceptance.log"), "w")

    def run(self, part, command, output=None):
        """(exit status, or None if stopped at the part's deadline; seconds). The command gets its own
        process group, so a stopped part leaves no worker behind. Its output goes to acceptance.log, through
        the file `output` if given (for the caller to read)."""
        timeout = max(1.0, self.deadlines[part] - time.monotonic())
        self.log.write(f"\n$ {' '.join(command)}   # {part}, {timeout:.0f} s left\n")
        self.log.flush()
        start = time.monotonic()
        with open(output, "w") if output else nullcontext(self.log) as sink:
            process = subprocess.Popen(command, cwd=self.cwd, stdout=sink, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                status = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                status = None
        if output:
            with open(output) as f:
                shutil.copyfileobj(f, self.log)
        seconds = time.monotonic() - start
        self.log.write(f"# exit status {status if status is not None else 'none: stopped at the deadline'}, "
                       f"{seconds:.1f} s\n")
        self.log.flush()
        return status, seconds

    def record(self, part, figures):
        self.report["parts"][part] = figures
        self.save()

    def save(self):
        self.report["elapsed_seconds"] = round(time.monotonic() - self.started, 1)
        write_report(self.out_dir, self.report)

    def close(self):
        self.save()
        self.log.close()


def outcome(status, seconds):
    """A part's verdict from its exit status."""
    if status is None:
        return {"ok": False, "error": f"stopped at its deadline after {seconds:.0f} s", "seconds": round(seconds, 1)}
    if status != 0:
        return {"ok": False, "error": f"exit status {status} (see acceptance.log)", "seconds": round(seconds, 1)}
    return {"ok": True, "seconds": round(seconds, 1)}
