"""The network a file holds, rebuilt: this project's checkpoints, the reference's bare `paras.pt`, and a clear
refusal for this project's own checkpoints from before its networks took the reference's layout.

    model, meta = model_from_file("runs/<run>/best_robust.pt")
    model, meta = model_from_file("paras.pt", "resnet32", "cifar10")   # the reference's format
"""
import torch

from checkpoints import CheckpointError, checkpoint_meta, load_checkpoint
from data import DATASETS
from models import MODELS


def build_model(name, dataset):
    spec = DATASETS[dataset]
    return MODELS[name](num_classes=spec.num_classes, mean=spec.mean, std=spec.std)


def model_from_file(path, model_name=None, dataset=None):
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
    put_weights(model, state["model"], path)
    return model.eval(), {**meta, "epoch": state.get("epoch")}


def put_weights(model, weights, path):
    """model.load_state_dict(weights), or a CheckpointError that names the first keys that do not fit, or
    says that the weights come from this project's networks before they took the reference's layout."""
    if not is_bare_state_dict(weights):
        raise CheckpointError(f"{path}: its 'model' entry is not a state_dict")
    _refuse_old_layout(path, weights)
    _refuse_wrapper_prefix(path, weights)
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

        model, _ = model_from_file("runs/<run>/best_robust.pt")
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
    _refuse_wrapper_prefix(path, weights)
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


# What wrappers put before every key of the network they wrap: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _refuse_wrapper_prefix(what, state):
    """A state_dict saved from a wrapper rather than from the network: say how to strip the prefix (doing it
    here unasked would hide which object was saved)."""
    prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
    if prefix:
        raise CheckpointError(
            f"{what}: every key starts with '{prefix}' (the state_dict of a DistributedDataParallel or "
            f"torch.compile wrapper, not of the network): save the network's own state_dict "
            f"(model.module.state_dict() for DDP), or strip the prefix: "
            f"{{k.removeprefix('{prefix}'): v for k, v in state_dict.items()}}")


def _refuse_old_layout(what, state):
    old = [k for k in state if k.startswith(OLD_LAYOUT_PREFIXES)]
    if old:
        raise CheckpointError(
            f"{what} was written before this project's networks took the reference's layout (it has keys such "
            f"as {old[0]}) and cannot be loaded: retrain, or use the version of this project that wrote it "
            f"(the CIFAR ResNets' shortcut also lost its BatchNorm, so no renaming converts them)")
