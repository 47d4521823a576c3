"""Shared fixtures. The real data under ../shared (beside the repository) is optional: tests that need it
skip cleanly in a user's clone, which has none."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFLINE_DATA = SHARED / "tools" / "offline_data.py"

sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds on one CPU thread")


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


# --- a trained MNIST-net checkpoint and its data, shared by the evaluation tests (CPU) ---------------------

def run_eval(capsys, *argv):
    """eval.py's main in-process on the CPU (a subprocess costs ~6 s of imports): (exit status, stdout,
    stderr)."""
    import eval as eval_script
    try:
        eval_script.main(["--device", "cpu", *map(str, argv)])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, says):
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Synthetic digits; every 8th test label is wrong, so that some samples are misclassified clean."""
    from formats import synthetic_digits, write_mnist
    root = tmp_path_factory.mktemp("mnist-root")
    train_images, train_labels = synthetic_digits(400, seed=1)
    test_images, test_labels = synthetic_digits(200, seed=2)
    test_labels[::8] = (test_labels[::8] + 1) % 10
    write_mnist(root, train_images, train_labels, test_images, test_labels)
    return root


# ALP.py's command line for small, quick MNIST-net runs on the CPU (add --data-root, --out and a --subset).
QUICK = ["mnist", "mnist", "-lp=null", "-lr=0.001", "-wd=0", "--optimizer=adam", "-b=50", "--epsilon=0.3",
         "--steps=3", "--stepsize=0.1", "--leverage=0.5", "--device=cpu"]

# For runs whose tests assert on files, lines and learning, not on robust accuracy: validation by PGD-1
# instead of the reference's PGD-100 on MNIST-type data, which is most of a small run's time.
CHEAP_VALIDATION = {"mnist": dict(epsilon=0.3, steps=1, stepsize=0.3)}


def cheap_validation_attack(family):
    """What ALP.py validates with under the cheap_validation fixture (and in tests/alp_process.py)."""
    from attacks import ATTACKS
    from training.validation import validation_attack
    if family not in CHEAP_VALIDATION:
        return validation_attack(family)
    return ATTACKS["pgd-linf"](**CHEAP_VALIDATION[family])


@pytest.fixture
def cheap_validation(monkeypatch):
    import training.loop
    monkeypatch.setattr(training.loop, "validation_attack", cheap_validation_attack)


@pytest.fixture(scope="session")
def finished_run_template(synthetic_mnist_root, tmp_path_factory):
    """A finished 2-epoch QUICK run on the synthetic digits, trained once per session in a subprocess
    (tests/alp_process.py, CPU): (its command line without --out, its --out folder). Tests that change a
    run folder take a copy (finished_run)."""
    out = tmp_path_factory.mktemp("finished") / "runs"
    argv = [*QUICK, "--subset=100", "--epochs=2", "--data-root", str(synthetic_mnist_root)]
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "alp_process.py"), *argv, "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return argv, out


@pytest.fixture
def finished_run(finished_run_template, tmp_path):
    """(command line, run folder) of a copy of finished_run_template's run, for this test to change."""
    argv, out = finished_run_template
    shutil.copytree(out, tmp_path / "runs")
    argv = [*argv, "--out", str(tmp_path / "runs")]
    return argv, run_folder_of(argv)


def run_epoch(step, loader, epoch):
    """step(x, y) -> (loss, adversarial logits) over one epoch of `loader`, as ALP.py's loop runs it; the
    epoch's training.EpochTally."""
    from training import EpochTally
    tally = EpochTally(loader.labels.device)
    for x, y in loader.epoch(epoch):
        tally.add(*step(x, y), y)
    return tally


def alp_iteration(attack, optimizer, leverage, autocast):
    """ALP.py's iteration (training/loop.py) at the default loss weights: what cuda_graph.GraphedStep records."""
    from training import train_step
    return lambda train_model, attack_model, x, y: train_step(train_model, attack_model, attack, optimizer, x, y,
                                                              leverage, autocast)


def run_folder_of(argv):
    """The run folder that ALP.py's command line `argv` trains in."""
    import os
    from training.flags import parse_args
    from training.records import run_name
    args = parse_args([str(a) for a in argv])
    return os.path.join(args.out, run_name(vars(args)))


def make_optimizer(name, params, lr, weight_decay=0.0, momentum=0.9, betas=(0.9, 0.999), fused=False):
    """An optimizer of optimization.OPTIMIZERS given the settings of both kinds, as ALP.py's command line
    holds them; each optimizer takes only its own."""
    from optimization import OPTIMIZERS, own_options
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, fused=fused,
                            **own_options(name, momentum, *betas))


def write_checkpoint(path, model, extra=None):
    """The format ALP.py writes: the model's weights and the meta that rebuilds it."""
    from checkpoints import save_checkpoint
    args = {"model": "mnist", "dataset": "mnist", "leverage": 0.5, "learning_policy": "null", "epsilon": 0.3,
            "attack": "pgd-linf", "steps": 40, "stepsize": 0.01, "epochs": 3}
    state = {"model": model.state_dict(), "epoch": 3,
             "meta": {"model": "mnist", "dataset": "mnist", "num_classes": 10, "args": args}}
    save_checkpoint({**state, **(extra or {})}, path)
    return path


def train_on_digits(model, seed=0, epochs=3):
    """Clean training on synthetic digits (CPU, a few seconds): easy for the model afterwards, but small
    steps still fool it."""
    import torch.nn.functional as F
    from formats import synthetic_digits
    torch.manual_seed(seed)
    images, labels = synthetic_digits(400, seed=1)
    device = next(model.parameters()).device
    x = torch.as_tensor(images, device=device).unsqueeze(1).float() / 255
    y = torch.as_tensor(labels, device=device).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for begin in range(0, len(y), 50):
            loss = F.cross_entropy(model(x[begin:begin + 50]), y[begin:begin + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """The MNIST net, trained on the synthetic digits (~3 s, CPU)."""
    from weights import build_model
    torch.manual_seed(0)
    model = train_on_digits(build_model("mnist", "mnist").to("cpu"))
    return write_checkpoint(tmp_path_factory.mktemp("run") / "last.pt", model)
