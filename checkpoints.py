"""Checkpoint files: what one holds, and writing and reading them so that a damaged one is refused, never used.

A checkpoint of this project is a dict with at least "model" (the network's state_dict) and "meta" (what
rebuilds the network without the command line: checkpoint_meta); `last.pt` adds the optimiser, scheduler,
metrics and random-number states that --resume needs (training/run_folder.py). save_checkpoint adds "format_version"
(FORMAT_VERSION) and "digest", a SHA-256 of the rest, version included; load_checkpoint refuses a version newer
than it reads, then recomputes the digest. Rebuilding the network a file holds is weights.py's work.
"""
import glob
import hashlib
import io
import os
import pickle
import re
import zipfile

import torch

from data import DATASETS
from utils import short_reason, update_digest, write_atomically


class CheckpointError(Exception):
    """A checkpoint cannot be used: the message names the file and says why."""


# The layout of what save_checkpoint writes. Raise it when a change would make this code misread a newer file
# or a newer code misread this one: an entry renamed or given another meaning, another digest, another way of
# storing tensors; not for an entry added that older code can ignore. Files from before the version existed
# have no "format_version" and read as version 0. load_checkpoint refuses a version above FORMAT_VERSION
# before it checks the digest, which a newer format may compute otherwise.
FORMAT_VERSION = 1


# --- integrity ---------------------------------------------------------------------------------------------

# A checkpoint this project writes nests a few levels deep and holds some thousands of entries; a file
# beyond these bounds is crafted or damaged, and walking it could take forever (shared references make a
# small file a huge tree) or exhaust the stack.
DIGEST_MAX_DEPTH = 32
DIGEST_MAX_ENTRIES = 1_000_000


def content_digest(state):
    """SHA-256 over a checkpoint's content as this project wrote it: every tensor's dtype, shape and bytes,
    every other entry's repr, dict keys in a fixed order. Stored under "digest" by save_checkpoint and
    recomputed by load_checkpoint, it catches damage to what torch.load returns, wherever it comes from.
    Raises ValueError for content beyond DIGEST_MAX_DEPTH levels or DIGEST_MAX_ENTRIES entries."""
    sha = hashlib.sha256()
    entries = 0

    def feed(value, depth):
        nonlocal entries
        entries += 1
        if depth > DIGEST_MAX_DEPTH or entries > DIGEST_MAX_ENTRIES:
            raise ValueError(f"it nests deeper than {DIGEST_MAX_DEPTH} levels or holds more than "
                             f"{DIGEST_MAX_ENTRIES:,} entries")
        if isinstance(value, torch.Tensor):
            sha.update(b"T")
            update_digest(sha, value)
        elif isinstance(value, dict):
            sha.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                feed(key, depth + 1)
                feed(value[key], depth + 1)
        elif isinstance(value, (list, tuple)):
            sha.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                feed(item, depth + 1)
        else:
            sha.update(f"{type(value).__name__}:{value!r};".encode())

    feed(state, 0)
    return sha.hexdigest()


def other_checkpoints(path):
    """What to use instead of a damaged checkpoint: the other .pt files of its folder, as one phrase."""
    folder = os.path.dirname(os.path.abspath(path))
    others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.pt"))
                    if os.path.abspath(p) != os.path.abspath(path))
    return (f"other checkpoints in {folder}: {', '.join(others)}" if others
            else f"no other checkpoint in {folder}")


def _damaged(path, reason):
    return CheckpointError(f"{path} is damaged ({reason}); use another one ({other_checkpoints(path)})")


# --- writing and reading -------------------------------------------------------------------------------------

def save_checkpoint(state, path):
    """Write `state` with its format version and the content digest of both. Serialised in memory first, then
    written to a temporary file and renamed: a kill at any moment leaves the previous file intact, and a full
    disk raises OSError (see utils.write_atomically) with no temporary file left behind."""
    state = {**state, "format_version": FORMAT_VERSION}
    buffer = io.BytesIO()
    torch.save({**state, "digest": content_digest(state)}, buffer)
    write_atomically(path, buffer.getbuffer())


def read_pt_file(path, device="cpu"):
    """Whatever a .pt file holds, loaded with weights_only=True (one that would run arbitrary code is
    refused), with every way of being unreadable turned into one CheckpointError line: missing, empty, not
    a PyTorch file, damaged (the zip container's CRC-32 sums are checked before unpickling). No content
    digest or layout is required: for bare state_dicts from elsewhere. load_checkpoint checks both."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        others = sorted(f for f in os.listdir(folder) if f.endswith(".pt")) if os.path.isdir(folder) else []
        # a run whose model gave one class at every validation leaves last.pt and no best_*.pt
        raise CheckpointError(f"no checkpoint at {path}" + (f" (that folder holds {', '.join(others)})"
                                                            if others else ""))
    size = os.path.getsize(path)
    if size == 0:
        raise _damaged(path, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise _damaged(path, short_reason(e)) from None
        if bad is not None:
            raise _damaged(path, f"the checksum of its part {bad} does not match")
    elif head[:1] != b"\x80":  # neither torch's zip format nor its older plain-pickle one
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file (it starts with {head!r})")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        needed = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the class or function it refused
        what = f"{needed.group(1)}, which needs code to load" if needed else "objects that need code to load"
        raise CheckpointError(f"{path} holds {what}; refusing it (loading only tensors and plain Python values "
                              f"runs no code from a file)") from None
    except Exception as e:  # flipped bytes reach the unpickler as any of a dozen exception types
        raise _damaged(path, short_reason(e)) from None


def load_checkpoint(path, device="cpu", require_meta=True):
    """A checkpoint's dict as save_checkpoint was given it (see read_pt_file): a format version newer than
    FORMAT_VERSION refused, the content digest checked. A file without a digest or a version (written before
    they existed) is accepted: its zip checksums were still checked. require_meta: it must be a checkpoint of
    this project, with "model" and "meta" entries."""
    state = read_pt_file(path, device)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (it holds a {type(state).__name__}, "
                              f"not a dict)")
    version = state.get("format_version", 0)
    if type(version) is not int:
        raise _damaged(path, f"its format version is {version!r}, not a whole number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer release of this project (checkpoint format "
                              f"{version}; this code reads up to {FORMAT_VERSION}): update the code")
    if "digest" in state:
        stored = state.pop("digest")
        try:
            matches = stored == content_digest(state)
        except ValueError as e:
            raise _damaged(path, str(e)) from None
        if not matches:
            raise _damaged(path, "its content does not match the digest stored with it")
    state.pop("format_version", None)
    if require_meta and ("model" not in state or "meta" not in state):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model' and 'meta' entries)")
    return state


def checkpoint_meta(model_name, dataset, training_args, data_digest=None):
    """What rebuilds the model without the command line: eval.py needs only the checkpoint. data_digest
    (data.data_digest of the training and validation data) lets --resume check it trains on the same data."""
    return {"model": model_name, "dataset": dataset, "num_classes": DATASETS[dataset].num_classes,
            "args": dict(training_args), "data_digest": data_digest}
