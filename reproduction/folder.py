"""A reproduction's folder: the request it was made for (request.json), refused in one line for other work,
and what the scripts have finished in it (ALP.py's run under training/, eval.py's reports)."""
import csv
import glob
import json
import os

from evaluation.files import figure_contradiction
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
        if "data_root" not in held:  # a folder from before the data root was recorded: its reports say theirs
            held = {**held, "data_root": request["data_root"]}
        if {**held, "data_root": None} == {**request, "data_root": None} and held != request:
            fail(f"{folder} holds the work of --data-root {held['data_root']}, not {request['data_root']}: give "
                 f"that --data-root, or choose another --out")
        if held != request:
            fail(f"{folder} holds the work of another command (`{held.get('command')}`, not "
                 f"`{request['command']}`): choose another --out, or remove that folder")
        if held != read_json(path):
            _write_request(path, request)
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        fail(describe_os_error(e))
    _write_request(path, request)


def _write_request(path, request):
    try:
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


def complete(report, weights):
    """Whether eval.py's report is a finished evaluation of the weights whose digest (evaluation.store's
    weights_digest) is `weights`: by digest, not by the checkpoint's path, so that a folder moved elsewhere
    keeps its evaluations."""
    identity = ((report or {}).get("evaluation") or {}).get("identity") or {}
    return bool(report and report.get("complete")) and identity.get("weights") == weights


def moved(report, checkpoint):
    """Whether eval.py's unfinished report at a path is of this checkpoint's evaluation under another path
    (the folder was moved): eval.py refuses to continue it without --force, which starts it afresh."""
    requested = ((report or {}).get("evaluation") or {}).get("requested") or {}
    return bool(report) and requested.get("checkpoint") not in (None, checkpoint)


def checked(path, report, weights, data_root, figures):
    """eval.py's finished report at `path`, once it is found to be what reproduce.py asked for: the figures
    agree with the counts beside them (evaluation.files.figure_contradiction), the weights and the data root
    are this reproduction's, and it holds each of `figures` ([(norm, epsilon label, attack label)]). Anything
    else ends the script in one line that names the file and the field."""
    def refuse(what):
        fail(f"{path}: {what}; remove {path} and run the same command to evaluate again")

    contradiction = figure_contradiction(report)
    if contradiction:
        refuse(contradiction)
    evaluation = report["evaluation"]
    if (evaluation.get("identity") or {}).get("weights") != weights:
        refuse("evaluation.identity.weights: not the digest of the weights this reproduction trained")
    recorded_root = evaluation.get("data_root")
    if not isinstance(recorded_root, str) or os.path.abspath(recorded_root) != data_root:
        refuse(f"evaluation.data_root: {recorded_root!r} is not this reproduction's --data-root {data_root}")
    found = {(t["norm"], t["epsilon_label"], record["label"]) for t in report["threat_models"]
             for record in t["attacks"]}
    for norm, epsilon, label in figures:
        if (norm, epsilon, label) not in found:
            refuse(f"threat_models: no {label} at {norm} {epsilon}")
    return report
