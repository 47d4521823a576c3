"""A reproduction's folder: the request it was made for (request.json), refused in one line for other work,
and what the scripts have finished in it (ALP.py's run under training/, eval.py's reports)."""
import csv
import glob
import json
import os

from utils import describe_os_error, fail, read_json, write_atomically

REQUEST = "request.json"


def claim(folder, request):
    """Make or reuse the folder for this request; one line and exit 2 where it holds other work."""
    path = os.path.join(folder, REQUEST)
    if os.path.isfile(folder):
        fail(f"--out {folder} is a file, not a folder")
    if os.path.isdir(folder) and os.listdir(folder):
        held = read_json(path)
        if held is None:
            fail(f"{folder} holds files that are not a reproduction's (no readable {REQUEST}): choose another --out")
        if held.get("table") != request["table"]:
            fail(f"{folder} holds the work of another table ({held.get('table')}, not {request['table']}): choose "
                 f"another --out, or remove that folder")
        if held != request:
            fail(f"{folder} holds the work of another command (`{held.get('command')}`, not "
                 f"`{request['command']}`): choose another --out, or remove that folder")
        return
    try:
        os.makedirs(folder, exist_ok=True)
        write_atomically(path, json.dumps(request, indent=2))
    except OSError as e:
        fail(describe_os_error(e))


def run_folder(parent):
    """The one run folder ALP.py made under `parent`, or None."""
    folders = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(parent, "*", "args.json")))
    if len(folders) > 1:
        fail(f"{parent} holds {len(folders)} training runs, where reproduce.py makes one: remove the others")
    return folders[0] if folders else None


def epochs_done(folder):
    """The last epoch metrics.csv records (ALP.py writes it after last.pt), 0 for none."""
    try:
        with open(os.path.join(folder, "metrics.csv")) as f:
            return max((int(row["epoch"]) for row in csv.DictReader(f)), default=0)
    except (OSError, ValueError, KeyError):
        return 0


def complete(report, checkpoint):
    """Whether eval.py's report is a finished evaluation of this checkpoint."""
    requested = ((report or {}).get("evaluation") or {}).get("requested") or {}
    return bool(report and report.get("complete")) and requested.get("checkpoint") == checkpoint
