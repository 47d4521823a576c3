"""Data sets as whole uint8 tensors on the training device, augmented per batch there (as airbench does).

Each split is decoded once through torchvision's own data set class (which also downloads it into the data
root on first use) and kept as one N x C x H x W uint8 tensor. A batch is a gather from that tensor plus a
random crop/flip done with index arithmetic on the device: no worker processes, no per-image PIL work.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd


class DataError(Exception):
    """The data cannot be had: the message says where it was expected and how to get it."""


@dataclass(frozen=True)
class DatasetSpec:
    load: callable          # (root, train, download) -> torchvision data set
    num_classes: int
    mean: tuple             # the reference's input normalisation, applied inside the model
    std: tuple
    family: str             # "cifar" (32x32 colour) or "mnist" (28x28 grey): picks default attacks
    crop: bool              # random 32-crop from 4-pixel zero padding
    flip: bool              # random horizontal flip
    folder: str             # what torchvision puts under the data root, for error messages


def _split(cls):
    return lambda root, train, download: cls(root, train=train, download=download)


# mean/std are the ALP reference's normalisation constants, so that our models (which normalise inside)
# give the reference's logits for the reference's weights; MNIST-type data is not normalised there.
DATASETS = {
    "cifar10": DatasetSpec(_split(tvd.CIFAR10), 10, (0.4914, 0.4824, 0.4467), (0.2471, 0.2435, 0.2617),
                           "cifar", True, True, "cifar-10-batches-py"),
    "cifar100": DatasetSpec(_split(tvd.CIFAR100), 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                            "cifar", True, True, "cifar-100-python"),
    # Digits are not mirror-symmetric, so SVHN gets crops but no flips.
    "svhn": DatasetSpec(lambda root, train, download: tvd.SVHN(root, "train" if train else "test",
                                                                  download=download),
                        10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cifar", True, False, "."),
    "mnist": DatasetSpec(_split(tvd.MNIST), 10, (0.0,), (1.0,), "mnist", False, False, "MNIST"),
    "fashionmnist": DatasetSpec(_split(tvd.FashionMNIST), 10, (0.0,), (1.0,), "mnist", False, False,
                                "FashionMNIST"),
}


def load_split(name, root, train):
    """(images uint8 N x C x H x W, labels int64 N) of one split, on the CPU."""
    spec = DATASETS[name]
    if os.path.isfile(root):
        raise DataError(f"--data-root {root} is a file, not a folder")
    try:
        ds = spec.load(root, train, download=False)
    except RuntimeError:  # not there (or fails the md5 check): download it
        ds = None
    try:
        if ds is None:
            ds = spec.load(root, train, download=True)
    except Exception as e:  # URLError, RuntimeError, OSError...: whatever a failed download raises
        where = os.path.join(root, spec.folder)
        raise DataError(
            f"{name} ({'train' if train else 'test'} split) is not under {where} and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); run once with network "
            f"access, or copy torchvision's {name} files into {root}") from None
    images = torch.as_tensor(np.asarray(ds.data))
    labels = torch.as_tensor(np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels))  # SVHN: .labels
    if images.dim() == 3:                      # MNIST-type: N x H x W
        images = images.unsqueeze(1)
    elif images.shape[-1] == 3:                # CIFAR: N x H x W x C; SVHN is already N x C x H x W
        images = images.permute(0, 3, 1, 2)
    return images.contiguous(), labels.long()


def train_val_splits(name, root, ratio=0.0, subset=None, seed=0):
    """Training and validation (images, labels). ratio 0 validates on the test split; otherwise that share
    of the training split, chosen by a fixed permutation, is held out. subset keeps the first N of each."""
    train = load_split(name, root, train=True)
    if ratio > 0:
        order = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(seed))
        n_val = int(round(ratio * len(order)))
        val = tuple(t[order[:n_val]] for t in train)
        train = tuple(t[order[n_val:]] for t in train)
    else:
        val = load_split(name, root, train=False)
    if subset:
        train, val = (tuple(t[:subset] for t in split) for split in (train, val))
    return train, val


def random_crop_flip(images, pad=4, flip=True):
    """Each image shifted by up to `pad` pixels over a zero border and, if flip, mirrored with probability
    1/2: one gather with per-sample row/column indices instead of a loop over images."""
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(h, device=dev)
    cols = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(w, device=dev)
    if flip:
        cols = torch.where(torch.rand(n, 1, device=dev) < 0.5, cols.flip(1), cols)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    channel = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


class DeviceLoader:
    """Batches of float images in [0, 1] and labels from a split held on `device`.

    shuffle: a fresh permutation each epoch, drawn from (seed, epoch) alone so that every process of a
    distributed run, and a resumed run, sees the same order; process `rank` of `world_size` takes every
    world_size-th sample of it, all processes getting the same number of batches."""

    def __init__(self, images, labels, batch_size, device, shuffle=False, crop=False, flip=False,
                 seed=0, rank=0, world_size=1, channels_last=False):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.crop, self.flip = batch_size, shuffle, crop, flip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self):
        return -(-(len(self.labels) // self.world_size) // self.batch_size)

    def epoch(self, epoch=0):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        else:
            order = torch.arange(n)
        order = order[self.rank::self.world_size][: n // self.world_size].to(self.images.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index]
            if self.crop:
                images = random_crop_flip(images, flip=self.flip)
            x = (images.float() / 255).contiguous(memory_format=self.memory_format)
            yield x, self.labels[index]
