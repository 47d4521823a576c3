"""An MNIST data root of the real one's size for timing on a machine that cannot carry the real MNIST: the
lent GPU machine carries 64 MiB in all, and the CIFAR-10 stand-in alone takes 53 MiB of it.

Its 10,000 test images are the real MNIST test digits (1.6 MB compressed, ../shared/data/mnist); its 60,000
training images are the same digits six times over. An epoch on it costs what an epoch on MNIST costs (the
same shapes and counts, and real digits for the attacks that stop early), but a model trained on it is
evaluated on its own training images: its accuracies mean nothing, its seconds are what the acceptance run
reads. Imported by acceptance.py, which puts the project's root on the path."""
import gzip
import os

import numpy as np

DIGITS = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # the real MNIST test split, compressed
TRAIN_COPIES = 6  # 6 x 10,000 = MNIST's 60,000 training images


def has_mnist(root):
    return os.path.isfile(os.path.join(root, "MNIST", "raw", "t10k-labels-idx1-ubyte"))


def write_mnist_timing_root(digits_folder, root):
    """ROOT/MNIST/raw's four idx files (uncompressed, as torchvision reads them), from the two compressed
    test-split files in `digits_folder`."""
    with gzip.open(os.path.join(digits_folder, DIGITS[0])) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(digits_folder, DIGITS[1])) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    splits = (("train", np.tile(images, (TRAIN_COPIES, 1, 1)), np.tile(labels, TRAIN_COPIES)),
              ("t10k", images, labels))
    for prefix, split_images, split_labels in splits:
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(np.array([2051, len(split_images), 28, 28], ">i4").tobytes() + split_images.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(np.array([2049, len(split_labels)], ">i4").tobytes() + split_labels.tobytes())
