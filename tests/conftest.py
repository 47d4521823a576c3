"""Shared fixtures. The real data under ../shared (beside the repository) is optional: tests that need it
skip cleanly in a user's clone, which has none."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFLINE_DATA = SHARED / "tools" / "offline_data.py"

sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """On a busy 2-core machine two intra-op threads spin-wait on each other (~50x slower than one).
    Subprocesses that tests start get OMP_NUM_THREADS=1 from their helpers for the same reason."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist_stand_in_root(tmp_path_factory):
    """A torchvision data root holding the real MNIST test split as 8k train / 2k test (../shared)."""
    if not (SHARED / "data" / "mnist").is_dir():
        pytest.skip("no ../shared/data/mnist beside the repository")
    root = tmp_path_factory.mktemp("mnist-stand-in")
    subprocess.run([sys.executable, str(OFFLINE_DATA), "mnist", str(root)], check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def synthetic_mnist_root(tmp_path_factory):
    """A data root with a small synthetic digit task (not MNIST) in MNIST's on-disk format: 600 train,
    200 test."""
    from formats import synthetic_digits, write_mnist
    root = tmp_path_factory.mktemp("synthetic-mnist")
    images, labels = synthetic_digits(800)
    write_mnist(root, images[:600], labels[:600], images[600:], labels[600:])
    return root
