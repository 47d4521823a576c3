"""Write small data sets in the exact on-disk formats that torchvision's data set classes read, so that
tests exercise the real loading code without a download."""
import os
import pickle

import numpy as np


def write_mnist(root, train_images, train_labels, test_images, test_labels, folder="MNIST"):
    """idx-ubyte files (uncompressed) under ROOT/<folder>/raw, as torchvision's MNIST/FashionMNIST expect.
    Images: uint8 N x 28 x 28."""
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, images, labels in (("train", train_images, train_labels), ("t10k", test_images, test_labels)):
        images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.uint8)
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(np.array([2051, len(images), 28, 28], ">i4").tobytes() + images.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(np.array([2049, len(labels)], ">i4").tobytes() + labels.tobytes())


def write_cifar10(root, train_images, train_labels, test_images, test_labels):
    """Pickled batches under ROOT/cifar-10-batches-py. Images: uint8 N x 32 x 32 x 3 (HWC, as stored).
    torchvision checks the real files' md5 sums: tests must switch that check off (see patch_md5)."""
    out = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(out, exist_ok=True)
    chunks = np.array_split(np.arange(len(train_labels)), 5)
    for k, idx in enumerate(chunks):
        _dump(os.path.join(out, f"data_batch_{k + 1}"), train_images[idx], np.asarray(train_labels)[idx], "labels")
    _dump(os.path.join(out, "test_batch"), test_images, test_labels, "labels")
    with open(os.path.join(out, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def write_cifar100(root, train_images, train_labels, test_images, test_labels):
    out = os.path.join(root, "cifar-100-python")
    os.makedirs(out, exist_ok=True)
    _dump(os.path.join(out, "train"), train_images, train_labels, "fine_labels")
    _dump(os.path.join(out, "test"), test_images, test_labels, "fine_labels")
    with open(os.path.join(out, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)


def write_svhn(root, train_images, train_labels, test_images, test_labels):
    """Matlab files ROOT/{train,test}_32x32.mat: X is 32 x 32 x 3 x N, y holds 1..10 with 10 for digit 0."""
    from scipy.io import savemat
    os.makedirs(root, exist_ok=True)
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        labels = np.asarray(labels).copy()
        labels[labels == 0] = 10
        savemat(os.path.join(root, f"{split}_32x32.mat"),
                {"X": np.ascontiguousarray(np.asarray(images, np.uint8).transpose(1, 2, 3, 0)),
                 "y": labels.reshape(-1, 1).astype(np.uint8)})


def _dump(path, images, labels, label_key):
    flat = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({"data": flat, label_key: [int(v) for v in labels]}, f)


def patch_md5(monkeypatch):
    """torchvision verifies CIFAR and SVHN files against the originals' md5 sums; files written here can
    only pass an existence check (offline_data.py does the same for its JPEG stand-in)."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn
    for module in (cifar, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def synthetic_digits(n, seed=0):
    """A learnable stand-in for MNIST (not MNIST): each class is a bright bar at its own position plus
    noise. uint8 N x 28 x 28 images and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        row = 2 + 2 * label
        images[i, row:row + 3, 4:24] += 180
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)
