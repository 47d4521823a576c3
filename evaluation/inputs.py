"""What eval.py evaluates: the device, the checkpoints, the test images (and whether they are the data the
checkpoint was trained on), a corruption folder's files. Whatever cannot be used stops the script in one line."""
import os

import torch

from checkpoints import CheckpointError
from data import DataError, data_digest, load_split, train_val_splits
from utils import fail
from weights import model_from_file


def resolve_device(name):
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        fail(f"--device {name} cannot be used ({str(e).splitlines()[0]})")
    return device


def load_model(path, model_name, dataset, device):
    """(model in eval mode on device, meta); bad checkpoints stop the script."""
    if os.path.isdir(path):
        fail(folder_instead_of_checkpoint(path))
    try:
        model, meta = model_from_file(path, model_name=model_name, dataset=dataset)
    except CheckpointError as e:
        fail(str(e))
    # NaN weights give NaN logits, whose argmax is class 0: better named here than blamed on an attack.
    not_finite = next((name for name, t in model.state_dict().items()
                       if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if not_finite:
        fail(f"{path}: the checkpoint's weights are not finite (the first such tensor is {not_finite})")
    model = model.to(device)
    if device.type == "cpu":
        # oneDNN's convolutions run faster in channels_last and gave the same figures as the contiguous
        # layout on an ALP-trained MNIST net; bf16 autocast, faster still, changed them, so attacks stay float32.
        model = model.to(memory_format=torch.channels_last)
    return model, meta


def folder_instead_of_checkpoint(path):
    """The line for a run folder given where a checkpoint belongs: the checkpoints it holds, one to name."""
    held = sorted(name for name in os.listdir(path) if name.endswith(".pt"))
    if not held:
        return f"{path} is a folder that holds no checkpoint (.pt file): name a checkpoint file"
    example = next((name for name in ("best_robust.pt", "last.pt") if name in held), held[0])
    return (f"{path} is a folder, not a checkpoint: it holds {', '.join(held)}; name one, e.g. "
            f"{os.path.join(path, example)}")


def load_source(path, model_name, dataset, target, device):
    """(source model, its description for the report): the checkpoint at `path` that transfer attacks are
    made on, which must be for the target's data set (a bare state_dict given model_name is taken to be)."""
    source, meta = load_model(path, model_name, dataset if model_name else None, device)
    if meta["dataset"] != dataset:
        fail(f"--transfer-from {path} is for {meta['dataset']} but {target} is for {dataset}: a transfer attack "
             f"needs both models for the same data set")
    return source, {"checkpoint": path, "model": meta.get("model"), "epoch": meta.get("epoch")}


def choose_data_root(given, training_args):
    """--data-root if given; else the run's own data root where it exists on this machine; else ./data."""
    if given:
        return given
    stored = (training_args or {}).get("data_root")
    return stored if stored and os.path.isdir(stored) else "./data"


def data_warnings(meta, data_root):
    """A warning when the data under data_root is not the data the checkpoint was trained and validated on
    (its meta's digest of both splits, recomputed as training loaded them): another copy of the data set,
    or a stand-in, may hold the checkpoint's training images in its test split. None for a checkpoint
    without a digest (a reference paras.pt)."""
    trained_on, training = meta.get("data_digest"), meta.get("args") or {}
    if not trained_on:
        return []
    try:
        train, val = train_val_splits(meta["dataset"], data_root, training.get("ratio") or 0.0,
                                      training.get("subset"), training.get("seed", 0))
    except DataError as e:
        return [f"cannot check that {data_root} holds the data the checkpoint was trained on ({e})"]
    if data_digest(*train, *val) == trained_on:
        return []
    return [f"the {meta['dataset']} data under {data_root} is not the data the checkpoint was trained and "
            f"validated on (its digest differs): its test images may include the checkpoint's training images"]


def load_test_images(meta, data_root, n):
    """(images, labels, data root, warnings): the first n (all for None) test images of the checkpoint's
    data set, from data_root (see choose_data_root for None)."""
    data_root = choose_data_root(data_root, meta.get("args"))
    try:
        images, labels = load_split(meta["dataset"], data_root, train=False)
    except DataError as e:
        fail(str(e))
    warnings = data_warnings(meta, data_root)
    if n and n > len(labels):
        warnings.append(f"--n {n} exceeds the {len(labels)} test images of {meta['dataset']}; evaluating "
                        f"all {len(labels)}")
    return images[:n], labels[:n], data_root, warnings


def corruption_files(folder):
    """[(file name, size)] of a corruption folder: what its report is recognised by ([] if unreadable)."""
    try:
        return sorted((name, os.path.getsize(os.path.join(folder, name)))
                      for name in os.listdir(folder) if name.endswith(".npy"))
    except OSError:
        return []
