"""Checkpoints: writing and reading them safely, and rebuilding the network a checkpoint holds.

A checkpoint of this project is a dict with at least "model" (the network's state_dict) and "meta" (what
rebuilds the network without the command line); `last.pt` adds the optimiser, scheduler, metrics and
random-number states that --resume needs. save_checkpoint adds "digest", a SHA-256 of the content that
load_checkpoint recomputes: a damaged file is refused, never used.
"""
import glob
import hashlib
import io
import os
import pickle
import zipfile

import torch

from data import DATASETS
from models import MODELS
from utils import short_reason, write_atomically


class CheckpointError(Exception):
    """A checkpoint cannot be used: the message names the file and says why."""


# --- integrity ---------------------------------------------------------------------------------------------

def content_digest(state):
    """SHA-256 over a checkpoint's content as this project wrote it: every tensor's dtype, shape and bytes,
    every other entry's repr, dict keys in a fixed order. Stored under "digest" by save_checkpoint and
    recomputed by load_checkpoint, it catches damage to what torch.load returns, wherever it comes from."""
    sha = hashlib.sha256()

    def feed(value):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            sha.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            sha.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                feed(key)
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            sha.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            sha.update(f"{type(value).__name__}:{value!r};".encode())

    feed(state)
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
    """Write `state` with its content digest. Serialised in memory first, then written to a temporary file
    and renamed: a kill at any moment leaves the previous file intact, and a full disk raises OSError
    (see utils.write_atomically) with no temporary file left behind."""
    buffer = io.BytesIO()
    torch.save({**state, "digest": content_digest(state)}, buffer)
    write_atomically(path, buffer.getbuffer())


def read_checkpoint_file(path, device="cpu"):
    """Whatever a .pt file holds, loaded with weights_only=True (one that would run arbitrary code is
    refused), with every way of being unreadable turned into one CheckpointError line: missing, empty, not
    a PyTorch file, damaged (the zip container's CRC-32 sums are checked before unpickling). No content
    digest or layout is required: for bare state_dicts from elsewhere. load_checkpoint checks both."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
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
        raise CheckpointError(f"{path} holds objects that need code to load; refusing it (weights_only=True "
                              f"loading: {str(e).strip().splitlines()[0]})") from None
    except Exception as e:  # flipped bytes reach the unpickler as any of a dozen exception types
        raise _damaged(path, short_reason(e)) from None


def load_checkpoint(path, device="cpu", require_meta=True):
    """A checkpoint's dict (see read_checkpoint_file), its content digest checked. A file without a digest
    (written before digests existed) is accepted: its zip checksums were still checked. require_meta:
    it must be a checkpoint of this project, with "model" and "meta" entries."""
    state = read_checkpoint_file(path, device)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (it holds a {type(state).__name__}, "
                              f"not a dict)")
    if "digest" in state:
        stored = state.pop("digest")
        if stored != content_digest(state):
            raise _damaged(path, "its content does not match the digest stored with it")
    if require_meta and ("model" not in state or "meta" not in state):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model' and 'meta' entries)")
    return state


def checkpoint_meta(model_name, dataset, training_args, data_digest=None):
    """What rebuilds the model without the command line: eval.py needs only the checkpoint. data_digest
    (data.data_digest of the training and validation data) lets --resume check it trains on the same data."""
    return {"model": model_name, "dataset": dataset, "num_classes": DATASETS[dataset].num_classes,
            "args": dict(training_args), "data_digest": data_digest}


def build_model(name, dataset):
    spec = DATASETS[dataset]
    return MODELS[name](num_classes=spec.num_classes, mean=spec.mean, std=spec.std)


def load_model(path, model_name=None, dataset=None):
    """(model on the CPU in eval mode, meta) from a file, for evaluation. The file is either a checkpoint of
    this project or a bare state_dict in the reference's format (its `paras.pt`), which does not say what it
    holds: model_name and dataset say it then, and are required. For this project's checkpoints they must
    agree with its meta where given. Raises CheckpointError."""
    state = load_checkpoint(path, require_meta=False)
    if is_bare_state_dict(state):
        model = _model_from_reference(path, state, model_name, dataset)
        return model, {**checkpoint_meta(model_name, dataset, {}), "epoch": None}
    if "model" not in state or "meta" not in state:
        raise CheckpointError(f"{path} is neither a checkpoint of this project (no 'model' and 'meta' entries) "
                              f"nor a bare state_dict")
    meta = state["meta"]
    if not isinstance(meta, dict) or meta.get("dataset") not in DATASETS or meta.get("model") not in MODELS:
        raise CheckpointError(f"{path}: its meta names no known model ({', '.join(MODELS)}) and data set "
                              f"({', '.join(DATASETS)})")
    for asked, key, what in ((model_name, "model", "model"), (dataset, "dataset", "data set")):
        if asked is not None and asked != meta[key]:
            raise CheckpointError(f"{path} holds a {meta['model']} trained on {meta['dataset']}, not the "
                                  f"{what} {asked} asked for")
    model = build_model(meta["model"], meta["dataset"])
    load_weights(model, state["model"], path)
    return model.eval(), {**meta, "epoch": state.get("epoch")}


def load_weights(model, weights, path):
    """model.load_state_dict(weights), or a CheckpointError that names the first keys that do not fit, or
    says that the weights come from this project's networks before they took the reference's layout."""
    if not is_bare_state_dict(weights):
        raise CheckpointError(f"{path}: its 'model' entry is not a state_dict")
    _refuse_old_layout(path, weights)
    problems = _key_mismatches(model.state_dict(), weights)
    if problems:
        raise CheckpointError(f"{path}: its weights do not fit the network ({type(model).__name__}): {problems}")
    model.load_state_dict(weights)


def is_bare_state_dict(contents):
    """Whether loaded contents are a bare state_dict (names -> tensors), as the reference saves `paras.pt`."""
    return (isinstance(contents, dict) and len(contents) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in contents.items()))


def to_reference_state_dict(model_or_state_dict):
    """A network of MODELS (or its state_dict, e.g. a checkpoint's "model" entry) as the reference's
    state_dict: the same tensors less our `normalize` buffers. Saved with torch.save, it loads strictly into
    the reference's network of the same name and, with the reference's input normalisation for the data set
    (the constants in data.DATASETS), gives the same logits. For example:

        model, _ = load_model("runs/<run>/best_robust.pt")
        torch.save(to_reference_state_dict(model), "paras.pt")
    """
    state = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module)
             else model_or_state_dict)
    _refuse_old_layout("the given state_dict", state)
    return {k: v for k, v in state.items() if not k.startswith(NORMALIZE_PREFIX)}


def _key_mismatches(expected, given, shown=3):
    """'' if the state_dict given has exactly the expected keys and shapes, else a sentence naming the first
    `shown` missing, unexpected and wrongly shaped keys."""
    def first(keys):
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshapen = [f"{k} {tuple(given[k].shape)} instead of {tuple(v.shape)}" for k, v in expected.items()
                 if k in given and given[k].shape != v.shape]
    return "; ".join(f"{label} {first(keys)}" for label, keys in
                     (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", misshapen)) if keys)


NORMALIZE_PREFIX = "normalize."  # our input normalisation, which the reference keeps outside its networks
# Top-level module names of this project's networks before they took the reference's layout.
OLD_LAYOUT_PREFIXES = ("stem.", "stages.", "features.", "classifier.")


def _model_from_reference(path, weights, model_name, dataset):
    _refuse_old_layout(path, weights)
    if model_name is None or dataset is None:
        raise CheckpointError(f"{path} is a bare state_dict (the reference's paras.pt format), which does not "
                              f"say what network it holds: give its model and data set (eval.py: --model and "
                              f"--dataset)")
    if model_name not in MODELS:
        raise CheckpointError(f"unknown model {model_name} (choose from {', '.join(MODELS)})")
    if dataset not in DATASETS:
        raise CheckpointError(f"unknown data set {dataset} (choose from {', '.join(DATASETS)})")
    model = build_model(model_name, dataset)
    problems = _key_mismatches(to_reference_state_dict(model), weights)
    if problems:
        raise CheckpointError(f"{path} does not hold the reference's {model_name}: {problems}")
    # The normalisation, which the reference applies outside its network, comes from the data set here.
    model.load_state_dict({**weights, **_normalize_buffers(model)})
    return model.eval()


def _normalize_buffers(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith(NORMALIZE_PREFIX)}


def _refuse_old_layout(what, state):
    old = [k for k in state if k.startswith(OLD_LAYOUT_PREFIXES)]
    if old:
        raise CheckpointError(
            f"{what} was written before this project's networks took the reference's layout (it has keys such "
            f"as {old[0]}) and cannot be loaded: retrain, or use the version of this project that wrote it "
            f"(the CIFAR ResNets' shortcut also lost its BatchNorm, so no renaming converts them)")


# --- random-number state ---------------------------------------------------------------------------------

def get_rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
