"""Data sets as whole uint8 tensors on the training device, augmented per batch there (as airbench does).

Each split is decoded once and kept as one N x C x H x W uint8 tensor: MNIST-type files (idx) are read here,
CIFAR and SVHN through torchvision's own data set classes, and torchvision downloads a data set missing from
the data root. torchvision is imported only for those: its import costs about a second (it brings in
torch._dynamo), which every script start would pay. A batch is a gather from that tensor plus a
random crop/flip done with index arithmetic on the device: no worker processes, no per-image PIL work.
"""
import hashlib
import importlib
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from utils import short_reason, update_digest


class DataError(Exception):
    """The data cannot be had: the message says where it was expected and how to get it."""


@dataclass(frozen=True)
class DatasetSpec:
    load: callable          # (root, train, download) -> torchvision data set
    num_classes: int
    mean: tuple             # the reference's input normalisation, applied inside the model
    std: tuple
    family: str             # "cifar" (32x32 colour) or "mnist" (28x28 grey): picks default attacks
    shape: tuple            # C x H x W of one image
    crop: bool              # random 32-crop from 4-pixel zero padding
    flip: bool              # random horizontal flip
    folder: str             # what torchvision puts under the data root, for error messages


def _torchvision(name):
    """torchvision.datasets.NAME, imported on first use (see the docstring above)."""
    return getattr(importlib.import_module("torchvision.datasets"), name)


def _split(name):
    return lambda root, train, download: _torchvision(name)(root, train=train, download=download)


CIFAR_SHAPE, MNIST_SHAPE = (3, 32, 32), (1, 28, 28)  # C x H x W

# mean/std are the ALP reference's normalisation constants, so that our models (which normalise inside)
# give the reference's logits for the reference's weights; MNIST-type data is not normalised there.
DATASETS = {
    "cifar10": DatasetSpec(_split("CIFAR10"), 10, (0.4914, 0.4824, 0.4467), (0.2471, 0.2435, 0.2617),
                           "cifar", CIFAR_SHAPE, True, True, "cifar-10-batches-py"),
    "cifar100": DatasetSpec(_split("CIFAR100"), 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                            "cifar", CIFAR_SHAPE, True, True, "cifar-100-python"),
    # Digits are not mirror-symmetric, so SVHN gets crops but no flips.
    "svhn": DatasetSpec(lambda root, train, download: _torchvision("SVHN")(root, "train" if train else "test",
                                                                             download=download),
                        10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cifar", CIFAR_SHAPE, True, False, "."),
    "mnist": DatasetSpec(_split("MNIST"), 10, (0.0,), (1.0,), "mnist", MNIST_SHAPE, False, False, "MNIST"),
    "fashionmnist": DatasetSpec(_split("FashionMNIST"), 10, (0.0,), (1.0,), "mnist", MNIST_SHAPE, False,
                                False, "FashionMNIST"),
}


def _checked_files(name, root, train):
    """[(path, what a sound file looks like)] for every file torchvision's class checks before it reads a
    split of `name`: ("idx", magic number) for MNIST-type files, ("md5", sum) for CIFAR and SVHN."""
    spec = DATASETS[name]
    folder = os.path.join(root, spec.folder)
    if spec.family == "mnist":  # torchvision requires both splits' files
        return [(os.path.join(folder, "raw", f"{prefix}-{kind}-ubyte"), ("idx", magic))
                for prefix in ("train", "t10k") for kind, magic in (("images-idx3", 2051), ("labels-idx1", 2049))]
    if name == "svhn":
        _, filename, md5 = _torchvision("SVHN").split_list["train" if train else "test"]
        return [(os.path.join(folder, filename), ("md5", md5))]
    cls = _torchvision({"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name])  # both splits' files, as torchvision
    return [(os.path.join(folder, filename), ("md5", md5)) for filename, md5 in cls.train_list + cls.test_list]


def _damage(path, check):
    """Why a file that is there cannot be what torchvision expects, or None."""
    kind, expected = check
    if kind == "md5":
        # the name each torchvision class checks with (looked up at each call: patched in tests and in
        # offline stand-ins whose files are not the originals)
        module = importlib.import_module("torchvision.datasets." + ("svhn" if path.endswith(".mat") else "cifar"))
        checker = module.check_integrity
        return None if checker(path, expected) else "it fails torchvision's md5 check"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(16)
    if size < 8:
        return f"{size} bytes, shorter than an idx header"
    magic = int.from_bytes(header[:4], "big")
    if magic != expected:
        return f"its magic number is {magic}, not {expected}"
    dims = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(magic % 256)]
    if size != 4 * (1 + len(dims)) + int(np.prod(dims)):
        return f"its header promises {' x '.join(map(str, dims))} bytes of data but it holds {size} bytes in all"
    return None


def _download(name, root, train):
    """torchvision's download; a failed one leaves no folder behind that it created."""
    spec = DATASETS[name]
    parent = os.path.dirname(os.path.abspath(root))
    if not os.path.isdir(parent):
        raise DataError(f"{name}: the data is not under {root}, and its parent folder {parent} does not exist "
                        f"(a mistyped --data-root?)")
    created = [d for d in (root, os.path.join(root, spec.folder)) if not os.path.exists(d)]
    try:
        return spec.load(root, train, download=True)
    except BaseException as e:  # URLError, RuntimeError, OSError... and a Ctrl-C halfway: no partial files left
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        if not isinstance(e, Exception):
            raise
        where = os.path.join(root, spec.folder)
        raise DataError(
            f"{name} ({'train' if train else 'test'} split) is not under {where} and could not be downloaded "
            f"({short_reason(e)}); run once with network access, or copy torchvision's {name} files into "
            f"{root}") from None


def _read_idx(path):
    """An idx-ubyte file that passed _damage() (magic number, dimensions, size) as a uint8 tensor of its
    dimensions: what torchvision's MNIST class reads from it."""
    with open(path, "rb") as f:
        content = bytearray(f.read())
    dims = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(content[3])]
    return torch.frombuffer(content, dtype=torch.uint8)[4 * (1 + len(dims)):].view(*dims)


def _data_and_labels(ds):
    """(images, labels) tensors of a torchvision data set object."""
    labels = ds.targets if hasattr(ds, "targets") else ds.labels  # SVHN: .labels
    return torch.as_tensor(np.asarray(ds.data)), torch.as_tensor(np.asarray(labels))


def load_split(name, root, train):
    """(images uint8 N x C x H x W, labels int64 N) of one split, on the CPU. Downloads the data set into
    root when none of its files are there; files that are there but damaged are named, never replaced."""
    spec = DATASETS[name]
    split = "train" if train else "test"
    if os.path.isfile(root):
        raise DataError(f"--data-root {root} is a file, not a folder")
    files = _checked_files(name, root, train)
    present = [path for path, _ in files if os.path.isfile(path)]
    if not present:
        images, labels = _data_and_labels(_download(name, root, train))
    else:
        missing = [path for path, _ in files if path not in present]
        if missing:
            raise DataError(f"{name} under {root} is incomplete: {', '.join(missing)} missing; copy it there, "
                            f"or delete {os.path.join(root, spec.folder)} to download the data set again")
        for path, check in files:
            reason = _damage(path, check)
            if reason:
                raise DataError(f"{path} is damaged ({reason}); replace it, or delete it to download it again")
        if spec.family == "mnist":  # the checks above read each file's header: the rest is the data
            split_files = files[:2] if train else files[2:]  # (images, labels) of the split
            images, labels = (_read_idx(path) for path, _ in split_files)
        else:
            try:
                images, labels = _data_and_labels(spec.load(root, train, download=False))
            except Exception as e:  # the files passed the checks above, but torchvision could not read them
                raise DataError(f"{name} ({split} split) under {root} is damaged: torchvision cannot read it "
                                f"({short_reason(e)})") from None
    if images.dim() == 3:                      # MNIST-type: N x H x W
        images = images.unsqueeze(1)
    elif images.shape[-1] == 3:                # CIFAR: N x H x W x C; SVHN is already N x C x H x W
        images = images.permute(0, 3, 1, 2)
    where = os.path.join(root, spec.folder)
    if len(images) != len(labels):
        raise DataError(f"{name} ({split} split) under {where} is damaged: {len(images)} images but "
                        f"{len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{name} ({split} split) under {where} is damaged: it holds no images")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DataError(f"{name} ({split} split) under {where} is damaged: labels outside 0..{spec.num_classes - 1}")
    return images.contiguous(), labels.long()


def balanced_subset(labels, n, generator):
    """Indices (ascending) of a random subset of n samples, drawn from `generator`, with every class as
    equally represented as its number of samples allows: classes take turns, each in a random order."""
    if n >= len(labels):
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    turn = torch.empty(len(labels), dtype=torch.long)  # a sample's place among its class in `order`
    for label in shuffled.unique():
        members = shuffled == label
        turn[members] = torch.arange(int(members.sum()))
    picked = torch.argsort(turn * len(labels) + torch.arange(len(labels)))[:n]
    return order[picked].sort().values


def train_val_splits(name, root, ratio=0.0, subset=None, seed=0):
    """Training and validation (images, labels). ratio 0 validates on the test split; otherwise that share
    of the training split, chosen by a fixed permutation, is held out. subset keeps a seeded, class-balanced
    random choice of N images of each split (the first N of a class-ordered file would be one class)."""
    train = load_split(name, root, train=True)
    if ratio > 0:
        order = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(seed))
        n_val = int(round(ratio * len(order)))
        val = tuple(t[order[:n_val]] for t in train)
        train = tuple(t[order[n_val:]] for t in train)
    else:
        val = load_split(name, root, train=False)
    if subset:  # one random stream per split
        train, val = ((images[index], labels[index]) for (images, labels), index in (
            (split, balanced_subset(split[1], subset, torch.Generator().manual_seed(seed + k)))
            for k, split in ((1, train), (2, val))))
    return train, val


def data_digest(*tensors):
    """SHA-256 of tensors' shapes and bytes: the identity of the data a run trains and validates on, whatever
    folder it was read from."""
    sha = hashlib.sha256()
    for t in tensors:
        update_digest(sha, t)
    return sha.hexdigest()


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
