"""What the lent GPU machine lacks, gathered on a networked one: the unpacked wheels of the packages its image
does not have and the shared data files, in one folder that the device tool carries beside the working tree.
Imported by acceptance.py (--prepare-device), which puts the project's root on the path."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import PackageNotFoundError, version

from utils import fail

# The packages that the GPU machine's image lacks (it has torch, torchvision, numpy, scipy, tqdm, matplotlib,
# pytest and pytest-xdist), pinned below to the versions installed here: the device runs what we test.
DEVICE_PACKAGES = ["pyautoattack", "foolbox", "eagerpy", "GitPython", "gitdb", "smmap"]
DEVICE_DATA = ["tools/offline_data.py", "data/cifar10-jpeg.npz",  # from ../shared, same layout
               "data/mnist/t10k-images-idx3-ubyte.gz", "data/mnist/t10k-labels-idx1-ubyte.gz"]  # timing_data.py
CARRY_LIMIT = 64 * 2 ** 20  # what the device tool carries: the working tree and the carried folders together


def prepare_device(folder, root, shared):
    """Unpacked wheels in FOLDER/site, ../shared's tools/ and data/ files under FOLDER; prints the sizes."""
    site = os.path.join(folder, "site")
    shutil.rmtree(site, ignore_errors=True)
    os.makedirs(site)
    pinned = []
    for name in DEVICE_PACKAGES:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    with tempfile.TemporaryDirectory() as wheels:
        if subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           "--dest", wheels, *pinned]).returncode != 0:
            fail(f"pip could not download {' '.join(pinned)} (above: why)", status=1)
        for wheel in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
    shutil.rmtree(os.path.join(site, "pyautoattack", "examples"), ignore_errors=True)  # 44 MB of samples
    for relative in DEVICE_DATA:
        source = os.path.join(shared, relative)
        if not os.path.exists(source):
            fail(f"{source} is missing: --prepare-device copies it from the shared folder")
        os.makedirs(os.path.dirname(os.path.join(folder, relative)), exist_ok=True)
        shutil.copyfile(source, os.path.join(folder, relative))
    carried = folder_bytes(folder)
    tree = sum(os.path.getsize(os.path.join(root, path)) for path in subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, text=True,
        check=True).stdout.splitlines() if os.path.isfile(os.path.join(root, path)))
    print(f"{folder}: {', '.join(pinned)} unpacked in site/ ({folder_bytes(site) / 2 ** 20:.1f} MiB); "
          f"{', '.join(DEVICE_DATA)}; {carried / 2 ** 20:.1f} MiB in all")
    print(f"with the working tree ({tree / 2 ** 20:.1f} MiB): {(carried + tree) / 2 ** 20:.1f} MiB of the device "
          f"tool's {CARRY_LIMIT / 2 ** 20:.0f} MiB")
    if carried + tree > CARRY_LIMIT:
        fail("too big to carry: the device tool takes 64 MiB at most")


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, names in os.walk(folder) for name in names)
