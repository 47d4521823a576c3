"""Accuracy on common corruptions: CIFAR-10-C / CIFAR-100-C as Hendrycks & Dietterich (2019) publish them."""
import os

import numpy as np
import torch

from attacks.common import device_of
from data import DATASETS
from utils import with_progress

from .engine import new_report
from .units import clean_predictions, evaluates_models
from .width import default_batch_size

SEVERITIES = 5  # severities 1..5, one block of images each, in that order
PUBLISHED_FOR = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}  # the data sets whose layout this reads


def _load_npy(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npy file ({str(e).splitlines()[0] if str(e) else 'empty'})") \
            from None


def load_corruptions(folder, dataset, n=None):
    """{corruption: uint8 images 5 x m x C x H x W}, labels 5 x m, from a folder laid out as Hendrycks &
    Dietterich (2019) publish CIFAR-10-C / CIFAR-100-C: <corruption>.npy of (5 * M) x H x W x C uint8
    images, severity 1 first, and labels.npy of 5 * M labels. n keeps the first n images of each severity.
    Raises ValueError naming the file for anything else."""
    spec = DATASETS[dataset]
    if dataset not in PUBLISHED_FOR:
        raise ValueError(f"--corruptions reads {' / '.join(PUBLISHED_FOR.values())} folders, for "
                         f"{' and '.join(PUBLISHED_FOR)} models; this one is for {dataset}")
    if not os.path.isdir(folder):
        raise ValueError(f"--corruptions {folder}: no such folder")
    labels_path = os.path.join(folder, "labels.npy")
    if not os.path.isfile(labels_path):
        raise ValueError(f"{folder} has no labels.npy (CIFAR-10-C / CIFAR-100-C ship one beside the images)")
    labels = _load_npy(labels_path)
    if labels.ndim != 1 or len(labels) == 0 or len(labels) % SEVERITIES or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path} must hold {SEVERITIES} x M integer labels, not {labels.dtype} of "
                         f"shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise ValueError(f"{labels_path} has labels outside 0..{spec.num_classes - 1} ({dataset})")
    names = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".npy") and f != "labels.npy")
    if not names:
        raise ValueError(f"{folder} holds no <corruption>.npy files beside labels.npy")
    per_severity = len(labels) // SEVERITIES
    # Every severity corrupts the same test images, so labels.npy repeats one block of labels per severity.
    # A folder of another number of severities still divides into 5 blocks when its size allows; only the
    # blocks' disagreement gives it away.
    blocks = np.asarray(labels).reshape(SEVERITIES, per_severity)
    if not (blocks == blocks[0]).all():
        raise ValueError(f"{labels_path} holds {len(labels)} labels that are not {SEVERITIES} repeats of one "
                         f"block of {per_severity} (one per severity, as CIFAR-10-C lays them out): does the "
                         f"folder hold another number of severities?")
    keep = min(n or per_severity, per_severity)
    c, h, w = spec.shape
    corruptions = {}
    for name in names:
        path = os.path.join(folder, f"{name}.npy")
        images = _load_npy(path)
        if images.shape != (len(labels), h, w, c) or images.dtype != np.uint8:
            raise ValueError(f"{path} must hold {len(labels)} x {h} x {w} x {c} uint8 images (as labels.npy "
                             f"has {len(labels)} labels), not {images.dtype} of shape {images.shape}")
        blocks = [np.asarray(images[s * per_severity:s * per_severity + keep]) for s in range(SEVERITIES)]
        corruptions[name] = torch.as_tensor(np.stack(blocks)).permute(0, 1, 4, 2, 3).contiguous()
    labels = np.stack([np.asarray(labels[s * per_severity:s * per_severity + keep]) for s in range(SEVERITIES)])
    return corruptions, torch.as_tensor(labels.astype(np.int64)), per_severity


@evaluates_models("model")
def evaluate_corruptions(model, folder, dataset="cifar10", n=None, *, batch_size=None, progress=False,
                         model_info=None):
    """Accuracy per corruption and severity, and the means, on a CIFAR-10-C / CIFAR-100-C folder (see
    load_corruptions). Returns the report, the figures under report["corruptions"]."""
    corruptions, labels, per_severity = load_corruptions(folder, dataset, n)
    device = device_of(model)
    batch_size = batch_size or default_batch_size(device, model, next(iter(corruptions.values()))[0])
    report = new_report(model_info or {"model": type(model).__name__}, dataset, labels.shape[1], batch_size,
                        device, None, None, 1, {"worst_case_only": False, "norms": None, "attacks": None,
                                                "epsilons": None})
    rows = []
    num_classes = DATASETS[dataset].num_classes
    for name, images in with_progress(corruptions.items(), len(corruptions), "corruptions", progress,
                                      unit="corruption"):
        accuracy = [(clean_predictions(model, images[s].to(device), batch_size, num_classes) == labels[s])
                    .float().mean().item() for s in range(SEVERITIES)]
        rows.append({"corruption": name, "accuracy": accuracy, "mean": sum(accuracy) / SEVERITIES})
    severity_means = [sum(r["accuracy"][s] for r in rows) / len(rows) for s in range(SEVERITIES)]
    report["corruptions"] = {
        "folder": folder, "images_per_severity": labels.shape[1], "available_per_severity": per_severity,
        "per_corruption": rows, "severity_means": severity_means, "mean": sum(severity_means) / SEVERITIES}
    report["masking_checks"] = []
    report["complete"] = True
    return report
