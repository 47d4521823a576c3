"""Data: loading from files in the real on-disk formats (MNIST-type here, the others through torchvision's own
classes), the errors when
data is missing, validation hold-out and subsets, the crop/flip augmentation, and the device loader."""
import gzip
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, SHARED
from data import (DATASETS, DataError, DeviceLoader, balanced_subset, data_digest, load_split, random_crop_flip,
                  train_val_splits)
from formats import patch_md5, write_cifar10, write_cifar100, write_mnist, write_svhn


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every download attempt fails at once, as on a machine without network (and without waiting on DNS)."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- fake data sets in the real formats ------------------------------------------------------------------

def _colour(n, rng):
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # H x W x C, as CIFAR and SVHN store it


def _grey(n, rng):
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


# name -> (writer(root, ...), image maker, number of classes)
WRITERS = {
    "cifar10": (write_cifar10, _colour, 10),
    "cifar100": (write_cifar100, _colour, 100),
    "svhn": (write_svhn, _colour, 10),
    "mnist": (write_mnist, _grey, 10),
    "fashionmnist": (lambda root, *a: write_mnist(root, *a, folder="FashionMNIST"), _grey, 10),
}


def write_dataset(name, root, n_train=12, n_test=7, seed=0):
    """Random images and labels (every class label 0 included) written under root; returns what was written
    as (train_images, train_labels, test_images, test_labels), images as numpy in the writer's layout."""
    writer, images, num_classes = WRITERS[name]
    rng = np.random.default_rng(seed)
    train_x, test_x = images(n_train, rng), images(n_test, rng)
    train_y = rng.integers(0, num_classes, n_train)
    test_y = rng.integers(0, num_classes, n_test)
    train_y[0] = test_y[0] = 0  # SVHN writes 0 as 10: make sure that case is there
    train_y[1] = num_classes - 1
    writer(str(root), train_x, train_y, test_x, test_y)
    return train_x, train_y, test_x, test_y


def as_nchw(images):
    images = torch.as_tensor(images)
    return images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_type_files_are_read_as_torchvisions_class_reads_them_on_cpu(name, folder, tmp_path):
    import torchvision.datasets as tvd
    write_dataset(name, tmp_path, n_train=30, n_test=9)
    for train in (True, False):
        theirs = getattr(tvd, folder)(str(tmp_path), train=train, download=False)
        images, labels = load_split(name, str(tmp_path), train=train)
        assert torch.equal(images[:, 0], theirs.data) and torch.equal(labels, theirs.targets)


def test_a_script_starts_without_importing_torchvision(tmp_path):
    """CPU. torchvision's import (which brings in torch._dynamo) took about a second of each script's start;
    it is needed only to download, and to read CIFAR and SVHN."""
    import subprocess
    import sys
    probe = "import sys, data, eval, ALP; print(sorted({'torchvision', 'torch._dynamo'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout == "[]\n", done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_each_dataset_loads_from_its_real_on_disk_format(name, tmp_path, monkeypatch):
    patch_md5(monkeypatch)
    train_x, train_y, test_x, test_y = write_dataset(name, tmp_path)
    channels = 1 if DATASETS[name].family == "mnist" else 3
    size = 28 if channels == 1 else 32
    for train, x, y in ((True, train_x, train_y), (False, test_x, test_y)):
        images, labels = load_split(name, str(tmp_path), train=train)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape == (len(y), channels, size, size)
        assert images.is_contiguous()
        assert torch.equal(images, as_nchw(x)), (name, train)
        assert torch.equal(labels, torch.as_tensor(y, dtype=torch.int64)), (name, train)


def test_svhn_label_10_is_digit_0(tmp_path, monkeypatch):
    patch_md5(monkeypatch)
    from scipy.io import loadmat
    _, train_y, _, _ = write_dataset("svhn", tmp_path)
    on_disk = loadmat(tmp_path / "train_32x32.mat")["y"].ravel()
    assert on_disk[0] == 10 and 0 not in on_disk
    _, labels = load_split("svhn", str(tmp_path), train=True)
    assert labels[0] == 0
    assert torch.equal(labels, torch.as_tensor(train_y))
    assert labels.min() >= 0 and labels.max() <= 9


def test_dataset_specs_match_their_data():
    for name, spec in DATASETS.items():
        assert spec.num_classes == (100 if name == "cifar100" else 10)
        channels = 1 if spec.family == "mnist" else 3
        assert len(spec.mean) == len(spec.std) == channels
        assert all(0 <= m < 1 for m in spec.mean) and all(0 < s <= 1 for s in spec.std)
    assert DATASETS["cifar10"].crop and DATASETS["cifar10"].flip
    assert DATASETS["cifar100"].crop and DATASETS["cifar100"].flip
    assert DATASETS["svhn"].crop and not DATASETS["svhn"].flip  # digits are not mirror-symmetric
    for name in ("mnist", "fashionmnist"):
        assert not DATASETS[name].crop and not DATASETS[name].flip


@pytest.fixture(scope="module")
def real_mnist_digits():
    return np.frombuffer(gzip.open(SHARED / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").read(),
                         np.uint8, offset=16).reshape(-1, 28, 28).copy()


def test_real_mnist_stand_in_loads_as_8000_train_and_2000_test(mnist_stand_in_root, real_mnist_digits):
    train_x, train_y = load_split("mnist", str(mnist_stand_in_root), train=True)
    test_x, test_y = load_split("mnist", str(mnist_stand_in_root), train=False)
    assert train_x.shape == (8000, 1, 28, 28) and test_x.shape == (2000, 1, 28, 28)
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.shape == (8000,) and test_y.shape == (2000,)
    assert set(train_y.tolist()) == set(test_y.tolist()) == set(range(10))
    assert torch.equal(train_x[:, 0], torch.as_tensor(real_mnist_digits[:8000]))
    assert torch.equal(test_x[:, 0], torch.as_tensor(real_mnist_digits[8000:]))


# --- missing data ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("train", [True, False])
def test_missing_data_without_network_is_a_one_line_data_error_naming_the_folder(name, train, tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        load_split(name, str(root), train=train)
    message = str(info.value)
    assert "\n" not in message
    assert os.path.join(str(root), DATASETS[name].folder) in message
    assert name in message and ("train" if train else "test") in message
    assert "URLError" in message or "RuntimeError" in message  # what the failed download said


def test_data_root_that_is_a_file_is_a_data_error(tmp_path):
    root = tmp_path / "not-a-folder"
    root.write_text("x")
    for name in DATASETS:
        with pytest.raises(DataError, match="is a file"):
            load_split(name, str(root), train=True)


def test_data_error_when_only_one_split_is_there(tmp_path, monkeypatch):
    # SVHN keeps one file per split (torchvision's CIFAR and MNIST classes check all files of both splits)
    patch_md5(monkeypatch)
    write_dataset("svhn", tmp_path)
    os.remove(tmp_path / "test_32x32.mat")
    assert len(load_split("svhn", str(tmp_path), train=True)[1]) == 12
    with pytest.raises(DataError, match="test split"):
        load_split("svhn", str(tmp_path), train=False)


def test_cifar_files_that_fail_the_md5_check_are_reported_as_such_and_named(tmp_path):
    write_dataset("cifar10", tmp_path)  # without patch_md5: torchvision rejects these files
    with pytest.raises(DataError) as info:
        load_split("cifar10", str(tmp_path), train=True)
    message = str(info.value)
    assert "md5" in message and os.path.join(str(tmp_path), "cifar-10-batches-py", "data_batch_1") in message
    assert "not under" not in message and "\n" not in message


MNIST_RAW = os.path.join("MNIST", "raw")


def damage_truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)


def damage_magic(path):
    with open(path, "r+b") as f:
        f.write(b"\x00\x00\x09\x99")


def damage_empty(path):
    open(path, "wb").close()


@pytest.mark.parametrize("damage", [damage_truncate, damage_magic, damage_empty])
@pytest.mark.parametrize("filename", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_damaged_mnist_file_is_named_as_damaged_not_missing(damage, filename, tmp_path):
    write_dataset("mnist", tmp_path)
    path = os.path.join(str(tmp_path), MNIST_RAW, filename)
    damage(path)
    with pytest.raises(DataError) as info:
        load_split("mnist", str(tmp_path), train=True)
    message = str(info.value)
    assert "damaged" in message and path in message and "download" not in message.split(";")[0]
    assert "\n" not in message


def test_fewer_labels_than_images_is_damage(tmp_path):
    rng = np.random.default_rng(0)
    write_mnist(str(tmp_path), _grey(12, rng), rng.integers(0, 10, 7), _grey(5, rng), rng.integers(0, 10, 5))
    with pytest.raises(DataError, match="damaged: 12 images but 7 labels"):
        load_split("mnist", str(tmp_path), train=True)


def test_labels_beyond_the_classes_are_damage(tmp_path):
    rng = np.random.default_rng(0)
    write_mnist(str(tmp_path), _grey(6, rng), [0, 1, 2, 3, 4, 12], _grey(5, rng), rng.integers(0, 10, 5))
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_split("mnist", str(tmp_path), train=True)


def test_mistyped_data_root_creates_no_folders(tmp_path):
    typo = tmp_path / "dtaa" / "mnist"
    with pytest.raises(DataError, match="does not exist"):
        load_split("mnist", str(typo), train=True)
    assert not (tmp_path / "dtaa").exists()
    # a root whose parent exists may be created by a download, but not left behind by a failed one
    with pytest.raises(DataError, match="could not be downloaded"):
        load_split("mnist", str(tmp_path / "new"), train=True)
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_during_a_download_leaves_no_folder_it_created(tmp_path, monkeypatch):
    """CPU. The download stopped halfway, after it wrote part of a file: the folders go, the Ctrl-C goes on."""
    import dataclasses
    import data

    def stopped_halfway(root, train, download):
        os.makedirs(os.path.join(root, "MNIST", "raw"))
        open(os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte.gz.part"), "wb").close()
        raise KeyboardInterrupt
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(data.DATASETS["mnist"], load=stopped_halfway))
    with pytest.raises(KeyboardInterrupt):
        load_split("mnist", str(tmp_path / "new"), train=True)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_says_why_after_the_colon(tmp_path):
    with pytest.raises(DataError) as info:
        load_split("mnist", str(tmp_path), train=True)
    message = str(info.value)
    assert "network disabled in tests" in message  # torchvision puts the reason on the line after the colon
    assert ":)" not in message and ": )" not in message


def test_data_digest_tells_data_apart():
    a = (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4))
    b = (a[0].clone(), a[1].clone())
    assert data_digest(*a) == data_digest(*b)
    b[0][3, 0, 1, 1] = 1
    assert data_digest(*a) != data_digest(*b)
    assert data_digest(*a) != data_digest(a[0], a[1].flip(0))


# --- validation hold-out and subsets ---------------------------------------------------------------------

@pytest.fixture
def indexed_cifar10(tmp_path, monkeypatch):
    """CIFAR-10 with 40 training and 10 test images whose first pixel holds their index (test: 100 + i)
    and whose label is index % 10."""
    patch_md5(monkeypatch)
    rng = np.random.default_rng(1)
    train_x, test_x = _colour(40, rng), _colour(10, rng)
    train_x[:, 0, 0, 0] = np.arange(40)
    test_x[:, 0, 0, 0] = 100 + np.arange(10)
    write_cifar10(str(tmp_path), train_x, np.arange(40) % 10, test_x, np.arange(10) % 10)
    return str(tmp_path)


def ids(split):
    return split[0][:, 0, 0, 0].tolist()


def test_ratio_zero_validates_on_the_test_split(indexed_cifar10):
    train, val = train_val_splits("cifar10", indexed_cifar10, ratio=0)
    assert ids(train) == list(range(40))
    assert ids(val) == list(range(100, 110))


@pytest.mark.parametrize("ratio,n_val", [(0.1, 4), (0.3, 12), (0.26, 10), (0.5, 20)])
def test_ratio_holds_out_that_share_of_training_images_disjoint_from_the_rest(indexed_cifar10, ratio, n_val):
    train, val = train_val_splits("cifar10", indexed_cifar10, ratio=ratio, seed=3)
    assert n_val == round(ratio * 40)
    assert len(ids(val)) == len(val[1]) == n_val
    assert len(ids(train)) == len(train[1]) == 40 - n_val
    assert set(ids(train)).isdisjoint(ids(val))
    assert sorted(ids(train) + ids(val)) == list(range(40))  # all from the training split, none lost
    for split in (train, val):  # labels stay with their images
        assert split[1].tolist() == [i % 10 for i in ids(split)]


def test_held_out_images_depend_on_the_seed_only(indexed_cifar10):
    a = train_val_splits("cifar10", indexed_cifar10, ratio=0.25, seed=0)[1]
    b = train_val_splits("cifar10", indexed_cifar10, ratio=0.25, seed=0)[1]
    c = train_val_splits("cifar10", indexed_cifar10, ratio=0.25, seed=1)[1]
    assert ids(a) == ids(b)
    assert set(ids(a)) != set(ids(c))
    assert set(ids(a)) != set(range(10))  # a random choice, not the first ones


def test_subset_is_a_seeded_class_balanced_random_choice_from_each_split(indexed_cifar10):
    train, val = train_val_splits("cifar10", indexed_cifar10, ratio=0, subset=20, seed=0)
    assert len(ids(train)) == len(set(ids(train))) == 20 and set(ids(train)) <= set(range(40))
    assert ids(train) != list(range(20))  # not the first 20
    assert torch.bincount(train[1], minlength=10).tolist() == [2] * 10  # 4 of each class to choose from
    assert train[1].tolist() == [i % 10 for i in ids(train)]  # labels stay with their images
    assert ids(train_val_splits("cifar10", indexed_cifar10, subset=20, seed=0)[0]) == ids(train)
    assert ids(train_val_splits("cifar10", indexed_cifar10, subset=20, seed=1)[0]) != ids(train)
    assert sorted(ids(val)) == list(range(100, 110))  # 20 > 10 test images: all of them


def test_subset_of_a_class_ordered_split_holds_every_class():
    labels = torch.arange(10).repeat_interleave(50)  # class-ordered: the first 50 are all class 0
    generator = torch.Generator().manual_seed(0)
    chosen = balanced_subset(labels, 25, generator)
    counts = torch.bincount(labels[chosen], minlength=10)
    assert len(chosen) == len(set(chosen.tolist())) == 25 and counts.min() == 2 and counts.max() == 3


def test_subset_balances_as_far_as_rare_classes_allow():
    labels = torch.tensor([0] * 30 + [1] * 2 + [2] * 8)
    chosen = balanced_subset(labels, 12, torch.Generator().manual_seed(3))
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [5, 2, 5]


def test_subset_applies_after_the_hold_out(indexed_cifar10):
    full_train, full_val = train_val_splits("cifar10", indexed_cifar10, ratio=0.25, seed=2)
    train, val = train_val_splits("cifar10", indexed_cifar10, ratio=0.25, seed=2, subset=5)
    assert set(ids(train)) <= set(ids(full_train)) and set(ids(val)) <= set(ids(full_val))
    assert len(ids(train)) == len(ids(val)) == 5
    assert set(ids(train)).isdisjoint(ids(val))


def test_subset_larger_than_a_split_keeps_all_of_it(indexed_cifar10):
    train, val = train_val_splits("cifar10", indexed_cifar10, subset=25)
    assert len(train[1]) == 25 and len(val[1]) == 10


# --- augmentation ----------------------------------------------------------------------------------------

def all_shifts_and_flips(images, pad=4):
    """candidates[dy, dx, mirrored] for every shift dy, dx in [-pad, pad] over a zero border: N x 9 x 9 x 2 x
    C x H x W."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    shifted = torch.stack([torch.stack([padded[:, :, r:r + h, s:s + w] for s in range(2 * pad + 1)], 1)
                           for r in range(2 * pad + 1)], 1)
    return torch.stack([shifted, shifted.flip(-1)], 3)


def match(out, images, pad=4):
    """For each output image, the (dy, dx, mirrored) that produce it from its input; asserts there is one."""
    equal = (all_shifts_and_flips(images, pad) == out[:, None, None, None]).flatten(4).all(-1).flatten(1)
    hits = equal.sum(1)
    assert (hits > 0).all(), f"images {(hits == 0).nonzero().flatten().tolist()} are no {pad}-pixel shift " \
                             "(or mirror) of their input"
    assert (hits == 1).all()  # random images: the transformation is unambiguous
    r, s, m = torch.unravel_index(equal.int().argmax(1), (2 * pad + 1, 2 * pad + 1, 2))
    return list(zip((r - pad).tolist(), (s - pad).tolist(), m.bool().tolist()))


def test_random_crop_flip_is_a_zero_filled_shift_of_at_most_4_pixels_maybe_mirrored():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (48, 3, 10, 10), dtype=torch.uint8)  # no zeros: borders show
    out = random_crop_flip(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    found = match(out, images)
    mirrored = [m for _, _, m in found]
    shifts = {(dy, dx) for dy, dx, _ in found}
    assert any(mirrored) and not all(mirrored)
    assert len(shifts) >= 10
    assert any(dy != 0 or dx != 0 for dy, dx in shifts)
    # an image shifted by s pixels has s zero rows/columns at one edge
    for i, (dy, dx, _) in enumerate(found):
        assert (out[i] == 0).all(0).sum() == 10 * (abs(dy) + abs(dx)) - abs(dy) * abs(dx)


def test_random_crop_flip_without_flip_never_mirrors():
    torch.manual_seed(1)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    found = match(random_crop_flip(images, flip=False), images)
    assert not any(m for _, _, m in found)
    assert len({(dy, dx) for dy, dx, _ in found}) >= 10


def test_random_crop_flip_uses_every_shift_and_both_flips_over_a_large_batch():
    torch.manual_seed(2)
    images = torch.randint(1, 256, (1000, 1, 6, 6), dtype=torch.uint8)
    found = match(random_crop_flip(images), images)
    assert {(dy, dx) for dy, dx, _ in found} == {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)}
    share = sum(m for _, _, m in found) / len(found)
    assert 0.4 < share < 0.6


def test_random_crop_flip_works_on_float_images_and_keeps_the_device():
    torch.manual_seed(3)
    images = torch.rand(8, 3, 7, 7) + 0.1
    out = random_crop_flip(images)
    assert out.dtype == torch.float32 and out.device == images.device
    match(out, images)


# --- DeviceLoader ----------------------------------------------------------------------------------------

def indexed_images(n, channels=3, size=6):
    """Image i is filled with i (mod 256) except pixel (0, 0), which is 255 - i % 256; label i."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).repeat(1, channels, size, size)
    images[:, :, 0, 0] = 255 - images[:, :, 0, 0]
    return images, torch.arange(n)


def epoch_labels(loader, epoch=0):
    return torch.cat([y for _, y in loader.epoch(epoch)]).tolist()


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n,batch_size", [(23, 5), (20, 4), (7, 10)])
def test_each_epoch_covers_every_sample_exactly_once(shuffle, n, batch_size):
    loader = DeviceLoader(*indexed_images(n), batch_size=batch_size, device="cpu", shuffle=shuffle, seed=4)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == -(-n // batch_size)
    assert all(len(y) == batch_size for _, y in batches[:-1]) and 0 < len(batches[-1][1]) <= batch_size
    labels = torch.cat([y for _, y in batches]).tolist()
    assert sorted(labels) == list(range(n))
    if not shuffle:
        assert labels == list(range(n))


def test_shuffled_order_differs_between_epochs_but_repeats_for_the_same_seed_and_epoch():
    images, labels = indexed_images(50)
    a = DeviceLoader(images, labels, batch_size=8, device="cpu", shuffle=True, seed=7)
    b = DeviceLoader(images, labels, batch_size=8, device="cpu", shuffle=True, seed=7)
    other_seed = DeviceLoader(images, labels, batch_size=8, device="cpu", shuffle=True, seed=8)
    orders = [epoch_labels(a, e) for e in range(4)]
    assert len({tuple(o) for o in orders}) == 4
    assert orders[0] != list(range(50))
    # the same (seed, epoch) gives the same order, in a fresh loader and out of sequence (a resumed run)
    assert epoch_labels(b, 2) == orders[2]
    assert epoch_labels(b, 0) == orders[0]
    assert epoch_labels(a, 1) == orders[1]
    assert epoch_labels(other_seed, 0) != orders[0]
    # and it does not depend on the global random state
    torch.manual_seed(123)
    assert epoch_labels(a, 3) == orders[3]


@pytest.mark.parametrize("n", [20, 21])
@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_get_disjoint_equal_shards_covering_n_div_2_times_2_samples(n, shuffle):
    images, labels = indexed_images(n)
    ranks = [DeviceLoader(images, labels, batch_size=3, device="cpu", shuffle=shuffle, seed=5, rank=r,
                          world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        shards = [epoch_labels(loader, epoch) for loader in ranks]
        assert len(shards[0]) == len(shards[1]) == n // 2
        assert set(shards[0]).isdisjoint(shards[1])
        assert len(set(shards[0]) | set(shards[1])) == n // 2 * 2
        assert len(list(ranks[0].epoch(epoch))) == len(list(ranks[1].epoch(epoch))) == len(ranks[0])
    if shuffle:  # the shards are of the same permutation as a single process sees
        single = epoch_labels(DeviceLoader(images, labels, batch_size=3, device="cpu", shuffle=True, seed=5), 1)
        assert shards[0] == single[0::2][:n // 2] and shards[1] == single[1::2][:n // 2]


def test_batches_are_float_in_0_1_equal_to_the_stored_values_over_255():
    images, labels = indexed_images(300)
    loader = DeviceLoader(images, labels, batch_size=64, device="cpu", shuffle=True, seed=1)
    for x, y in loader.epoch(0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 1
        assert torch.equal(x, images[y].float() / 255)
    assert images.dtype == torch.uint8  # the stored split is left as it was


@pytest.mark.parametrize("name", ["mnist", "fashionmnist"])
def test_mnist_type_specs_do_not_augment(name):
    spec = DATASETS[name]
    torch.manual_seed(0)
    images = torch.randint(1, 256, (40, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(40)
    loader = DeviceLoader(images, labels, batch_size=16, device="cpu", shuffle=True, crop=spec.crop,
                          flip=spec.flip, seed=0)
    for x, y in loader.epoch(0):
        assert torch.equal(x, images[y].float() / 255)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_cifar_type_specs_augment_with_shifts_and_flips_where_the_spec_says(name):
    spec = DATASETS[name]
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(64)
    loader = DeviceLoader(images, labels, batch_size=32, device="cpu", shuffle=True, crop=spec.crop,
                          flip=spec.flip, seed=0)
    found = []
    for x, y in loader.epoch(0):
        found += match((x * 255).round().to(torch.uint8), images[y])
    assert any(dy or dx for dy, dx, _ in found)
    assert any(m for _, _, m in found) == spec.flip


def test_channels_last_batches_hold_the_same_values():
    images, labels = indexed_images(10)
    plain = DeviceLoader(images, labels, batch_size=4, device="cpu")
    cl = DeviceLoader(images, labels, batch_size=4, device="cpu", channels_last=True)
    for (x, _), (z, _) in zip(plain.epoch(0), cl.epoch(0)):
        assert z.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, z)
