"""An evaluation's files: its JSON report and, while it is unfinished, the folder of finished units of work
beside it. Both are recognised by what was evaluated, never by their names alone: an identity (the digests of
the weights and of the test images and labels, the model and data set, the device, the batch size and the
report format) is stored with each, and whatever was written for another identity is refused or set aside,
never reused and never mixed with this evaluation's figures.

    json_path = default_json_path(checkpoint, requested)               # unless --json names one
    identity = evaluation_identity(model, images, labels, ...)
    finished = check_report(json_path, requested, identity, force)   # a finished report of this evaluation
    store, notes = open_units(units_folder(json_path), identity, force)
"""
import glob
import itertools
import json
import os
import re
import shutil

from utils import read_json, write_atomically

from .engine import REPORT_FORMAT
from .store import MANIFEST, UnitStore, evaluation_digests

# How each part of an identity is named where two differ ("a finished evaluation of other weights").
DIFFERENCES = {
    "format": "another release of this project (report format {then} then, {now} now)",
    "model": "another model ({then} then, {now} now)",
    "dataset": "another data set ({then} then, {now} now)",
    "weights": "other weights",
    "source_model": "another source model ({then} then, {now} now)",
    "source_weights": "another source's weights",
    "images": "other test images or labels",
    "corruption_files": "other corruption files",
    "device": "another kind of device ({then} then, {now} now)",
    "batch_size": "another batch size (-b {then} then, -b {now} now)",
}


def evaluation_identity(model, model_name, dataset, device, *, images=None, labels=None, batch_size=None,
                        source=None, source_name=None, corruption_files=None):
    """What an evaluation's figures depend on besides its selection (eval.py's `requested`): JSON-able.
    corruption_files: for --corruptions, [(file name, size in bytes)] of the corruption folder, which is
    too large to digest at every start."""
    identity = {"format": REPORT_FORMAT, "model": model_name, "dataset": dataset, "device": device.type,
                **evaluation_digests(model, images, labels, source)}
    if source is not None:
        identity["source_model"] = source_name
    if batch_size is not None:
        identity["batch_size"] = batch_size
    if corruption_files is not None:
        identity["corruption_files"] = [list(entry) for entry in corruption_files]
    return identity


def differences(then, now):
    """What differs between two identities, as a phrase: "other weights and another batch size (-b 8 then,
    -b 16 now)"."""
    parts = [text.format(then=then.get(key), now=now.get(key)) for key, text in DIFFERENCES.items()
             if then.get(key) != now.get(key)]
    parts = parts or ["another evaluation"]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def default_json_path(checkpoint, requested):
    """<checkpoint>.eval.json for the full default evaluation; otherwise the selection (eval.py's `requested`)
    in the name, e.g. last.eval.n100_linf_fgsm+pgd-50.json, so that a small trial never replaces a full
    result."""
    parts = []
    if requested["n"]:
        parts.append(f"n{requested['n']}")
    for key in ("norms", "attacks"):
        if requested[key]:
            parts.append("+".join(requested[key]))
    if requested["epsilons"]:
        parts.append("eps" + "+".join(requested["epsilons"]))
    if requested["seed"]:
        parts.append(f"seed{requested['seed']}")
    if requested["worst_case_only"]:
        parts.append("worst-case-only")
    if requested["aa_version"] != "standard":
        parts.append(f"aa-{requested['aa_version']}")
    if requested["transfer_from"]:
        # with the source's folder (its run): two runs' best_robust.pt must not share a file
        folder, file = os.path.split(requested["transfer_from"])
        parts.append(f"from-{os.path.basename(folder)}-{os.path.splitext(file)[0]}")
    if requested["sweep"]:
        parts.append("sweep-" + "-".join(requested["sweep"]))
    if requested["corruptions"]:
        parts.append("corruptions-" + os.path.basename(requested["corruptions"].rstrip(os.sep)))
    tag = re.sub(r"[^A-Za-z0-9.+-]", "_", "_".join(parts))
    return f"{os.path.splitext(checkpoint)[0]}.eval{'.' + tag if tag else ''}.json"


def units_folder(json_path):
    """Where the finished units of work wait until the evaluation completes: beside its JSON, named from the
    JSON's whole name, so that report.json and report.txt never share one."""
    return json_path + ".units"


def recorded_batch_size(json_path, device):
    """The batch size of the evaluation that json_path (or its units folder) holds, if it ran on the same kind
    of device: without -b, a continued evaluation keeps its own batch size (the default on CUDA follows the
    free memory, which changes) so that its finished units still count."""
    for path in (json_path, os.path.join(units_folder(json_path), MANIFEST)):
        content = read_json(path) or {}
        identity = content.get("identity") or (content.get("evaluation") or {}).get("identity") or {}
        if identity.get("device") == device.type and isinstance(identity.get("batch_size"), int):
            return identity["batch_size"]
    return None


def check_report(path, requested, identity, force):
    """The report at `path` if it is this very evaluation, finished; None where there is nothing to keep
    (no file, an unfinished one, or force). Raises ValueError, one sentence, for a path that is a folder or
    cannot be written, for a report from a newer release, and, without force, for a report of another
    evaluation: another selection, or a finished one of other weights, images, options..."""
    if os.path.isdir(path):
        raise ValueError(f"--json {path} is a folder")
    earlier = None
    if os.path.exists(path) and not force:
        earlier = read_json(path)
        version = earlier.get("format", 1) if earlier else None
        if isinstance(version, int) and version > REPORT_FORMAT:
            raise ValueError(f"{path} was written by a newer release of this project (report format {version}; "
                             f"this code reads up to {REPORT_FORMAT}): update the code, or choose another --json")
        if not earlier or (earlier.get("evaluation") or {}).get("requested") != json.loads(json.dumps(requested)):
            raise ValueError(f"{path} holds a different evaluation; pass --force to overwrite it, or choose "
                             f"another --json")
    probe = f"{path}.{os.getpid()}.tmp"  # every process of a torchrun probes: each with a file of its own
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"--json {path} cannot be written ({e.strerror or type(e).__name__})") from None
    if not earlier or not earlier.get("complete"):
        return None
    contradiction = figure_contradiction(earlier)
    if contradiction:
        raise ValueError(f"{path} does not hold figures this project wrote ({contradiction}): edited or "
                         f"damaged; pass --force to evaluate again")
    stored = earlier["evaluation"].get("identity")
    if stored != identity:
        what = (differences(stored, identity) if stored else
                "unknown weights and images (written by an earlier release, which kept no digests of them)")
        raise ValueError(f"{path} holds a finished evaluation of {what}, not of what is evaluated now; pass "
                         f"--force to evaluate again, or choose another --json")
    return earlier


def _count(value):
    return type(value) is int and value >= 0


def _agrees(figure, count, n):
    """Whether `figure` is a number equal to count / n (as the engine writes it)."""
    return type(figure) in (int, float) and abs(figure - count / n) <= 1e-9


def figure_contradiction(report):
    """Where a finished report's figures contradict the counts beside them, or a field they need is missing or
    of another type: "FIELD: what is wrong" for the first such field; None where every figure agrees. Each
    accuracy is a count over n written as a fraction, so a figure edited by hand stands out. (--corruptions
    reports keep no counts beside their accuracies: not checked.)"""
    if report.get("corruptions"):
        return None
    evaluation = report.get("evaluation")
    n = evaluation.get("n") if isinstance(evaluation, dict) else None
    if not _count(n) or n == 0:
        return f"evaluation.n: {n!r} is not a positive number of test images"
    clean = report.get("clean")
    if not isinstance(clean, dict) or not _count(clean.get("correct")) or clean["correct"] > n:
        return f"clean.correct: missing, or not a count of at most {n} images"
    if not _agrees(clean.get("accuracy"), clean["correct"], n):
        return f"clean.accuracy: {clean.get('accuracy')!r} is not {clean['correct']} correct of {n}"
    sections = [("threat_models", report.get("threat_models"))]
    if isinstance(report.get("transfer"), dict):
        sections.append(("transfer.threat_models", report["transfer"].get("threat_models")))
    for where, tables in sections:
        if not isinstance(tables, list) or (where == "threat_models" and not tables and not any(
                report.get(key) for key in ("transfer", "sweep", "corruptions"))):
            return f"{where}: missing or empty"
        for t, table in enumerate(tables):
            at = f"{where}[{t}]"
            if not isinstance(table, dict) or not all(isinstance(table.get(key), str)
                                                      for key in ("norm", "epsilon_label")):
                return f"{at}: no norm and epsilon_label"
            records = table.get("attacks")
            if not isinstance(records, list) or not records:
                return f"{at}.attacks: missing or empty"
            for r, record in enumerate(records):
                field = f"{at}.attacks[{r}]"
                if not isinstance(record, dict) or not isinstance(record.get("label"), str):
                    return f"{field}: not an attack's record"
                attacked, broken, figure = record.get("attacked"), record.get("broken"), record.get("robust_accuracy")
                if not (_count(attacked) and _count(broken) and broken <= attacked <= n):
                    return (f"{field} ({record['label']}): attacked {attacked!r} and broken {broken!r} are not "
                            f"counts of at most {n} images")
                if figure is not None and not _agrees(figure, attacked - broken, n):
                    return (f"{field}.robust_accuracy ({record['label']}): {figure!r} is not the {attacked - broken} "
                            f"of {n} images left unbroken ({broken} broken of {attacked} attacked)")
            worst = table.get("worst_case")
            if not isinstance(worst, dict) or not _count(worst.get("robust")) or worst["robust"] > n:
                return f"{at}.worst_case.robust: missing, or not a count of at most {n} images"
            if not _agrees(worst.get("robust_accuracy"), worst["robust"], n):
                return (f"{at}.worst_case.robust_accuracy: {worst.get('robust_accuracy')!r} is not {worst['robust']} "
                        f"of {n}")
    return None


def remove(folder):
    """A units folder gone, or the link that stands for it (not the folder it points to)."""
    if os.path.islink(folder) or os.path.isfile(folder):
        os.remove(folder)
    elif os.path.isdir(folder):
        shutil.rmtree(folder)


def stale_folders(folder):
    """The units folders set aside beside `folder` (<folder>.stale-N)."""
    return sorted(glob.glob(glob.escape(folder) + ".stale-*"))


def open_units(folder, identity, force):
    """(UnitStore of this evaluation's finished units, [lines to print]). With force an earlier folder is
    removed (a link to one: the link), and every one set aside. A folder that holds the units of another
    identity, or of an unknown one, is set aside as <folder>.stale-N, never read: a line says what differed.
    At most one is kept aside, and one of this identity (the weights came back) is taken up again. Raises
    OSError where the folder cannot be made."""
    notes = []
    if force:
        for path in [folder, *stale_folders(folder)]:
            remove(path)
    else:
        ours = next((path for path in stale_folders(folder)
                     if (read_json(os.path.join(path, MANIFEST)) or {}).get("identity") == identity), None)
        stored = (read_json(os.path.join(folder, MANIFEST)) or {}).get("identity")
        if os.path.lexists(folder) and stored != identity:
            for path in stale_folders(folder):
                if path != ours:
                    remove(path)
            aside = next(name for name in (f"{folder}.stale-{k}" for k in itertools.count(1))
                         if not os.path.lexists(name))
            os.rename(folder, aside)
            what = differences(stored, identity) if stored else "an unknown evaluation (it holds no manifest)"
            notes.append(f"{folder} held the units of an evaluation of {what}: set aside as {aside}, and "
                         f"not used; this evaluation " + ("takes up its own units again" if ours else "starts afresh"))
        if ours and not os.path.lexists(folder):
            os.rename(ours, folder)
            if not notes:
                notes.append(f"{ours} held this evaluation's units, set aside earlier: taken up again")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        write_atomically(os.path.join(folder, MANIFEST), json.dumps({"identity": identity}, indent=2))
    store = UnitStore(folder)
    if store.unreadable:
        notes.append(f"{store.unreadable} files in {folder} hold no unit of work that can be read (damaged or "
                     f"edited?): those units run again")
    return store, notes
