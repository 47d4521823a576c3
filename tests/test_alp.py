"""ALP training on the CPU: the loss, the training step, and ALP.py end to end (run folder, resume, bad
input)."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import ALP
import training.alp
from training.flags import parse_args
from attacks import ATTACKS
from conftest import QUICK, ROOT, run_folder_of
from models import MODELS
from checkpoints import load_checkpoint



def run_folder(out):
    (name,) = os.listdir(out)
    return os.path.join(out, name)


def alp_cli(*args, **kwargs):
    """ALP.py in a subprocess with a cheap validation attack (tests/alp_process.py), on one CPU thread (see
    conftest.one_thread)."""
    return subprocess.run([sys.executable, str(ROOT / "tests" / "alp_process.py"), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)


def tiny_batch(seed=0, n=32):
    torch.manual_seed(seed)
    model = MODELS["resnet20"](num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    return model, torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))


def test_alp_loss_equals_hand_computation():
    logits_nat = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    logits_adv = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 0.0]])
    y = torch.tensor([0, 1])
    outputs = {0: logits_nat, 1: logits_adv}
    model = lambda x: outputs[int(x[0, 0])]  # noqa: E731 - x marks which half is asked for

    def cross_entropy(logits, labels):
        return np.mean([np.log(np.exp(row).sum()) - row[k] for row, k in zip(logits.numpy(), labels.numpy())])

    squared = ((logits_adv - logits_nat) ** 2).numpy()
    expected = (cross_entropy(logits_nat, y) + cross_entropy(logits_adv, y) + 0.7 * squared.sum() / squared.size)
    loss, returned_adv = training.alp_loss(model, torch.zeros(2, 1), torch.ones(2, 1), y, leverage=0.7)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(returned_adv, logits_adv)


def test_alp_loss_runs_two_forward_passes_so_batchnorm_sees_each_half_alone():
    model, x, y = tiny_batch()
    x_adv = (x + 0.1).clamp(0, 1)
    seen = []
    model.bn0.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    model.train()
    training.alp_loss(model, x, x_adv, y, 0.5)
    assert seen == [len(x), len(x)]


def test_train_step_attacks_in_eval_mode_and_trains_in_train_mode():
    model, x, y = tiny_batch()
    modes = []
    model.bn0.register_forward_hook(lambda m, inp, out: modes.append(m.training))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    training.train_step(model, model, ATTACKS["pgd-linf"](8 / 255, steps=2, stepsize=2 / 255), optimizer, x, y, 0.5)
    assert modes == [False, False, True, True]  # 2 attack steps, then the clean and adversarial passes


@pytest.mark.slow
def test_a_few_alp_steps_lower_the_loss_on_a_fixed_batch():
    model, x, y = tiny_batch(n=16)
    attack = ATTACKS["pgd-linf"](4 / 255, steps=2, stepsize=2 / 255)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    losses = [training.train_step(model, model, attack, optimizer, x, y, 0.5)[0].item() for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_bf16_autocast_loss_is_close_to_float32_and_still_learns():
    model, x, y = tiny_batch(n=16)
    model.eval()  # BatchNorm with running statistics: the two passes see the same normalisation
    x_adv = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        loss_fp32 = training.alp_loss(model, x, x_adv, y, 0.5)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_bf16 = training.alp_loss(model, x, x_adv, y, 0.5)[0]
    assert loss_bf16.dtype == torch.float32  # logits are cast before the losses
    assert loss_bf16.item() == pytest.approx(loss_fp32.item(), rel=0.02)

    model.train()
    attack = ATTACKS["pgd-linf"](4 / 255, steps=2, stepsize=2 / 255)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    losses = [training.train_step(model, model, attack, optimizer, x, y, 0.5, autocast)[0].item() for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_one_epoch_end_to_end_writes_the_run_folder_and_shows_progress(synthetic_mnist_root, tmp_path):
    result = alp_cli(*QUICK, "--epochs=1", "--subset=200", "--progress", "--data-root",
                     synthetic_mnist_root, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 1" in result.stderr and "validating epoch 1" in result.stderr  # both progress bars
    run = run_folder(tmp_path)
    assert os.path.basename(run).startswith("mnist-mnist-ALP-lev0.5-pgd-linf-eps0.3-steps3")
    for name in ("args.json", "log.txt", "metrics.csv", "curves.png", "last.pt", "best_clean.pt", "best_robust.pt"):
        assert os.path.isfile(os.path.join(run, name)), name
    with open(os.path.join(run, "metrics.csv")) as f:
        (row,) = list(csv.DictReader(f))
    state = load_checkpoint(os.path.join(run, "best_robust.pt"))
    assert state["robust_accuracy"] == pytest.approx(float(row["robust_accuracy"]))  # the epoch's own figures
    assert float(row["robust_accuracy"]) <= float(row["clean_accuracy"])  # the attack starts from clean images
    assert state["meta"]["model"] == "mnist" and state["meta"]["dataset"] == "mnist"
    assert state["meta"]["num_classes"] == 10 and state["meta"]["args"]["leverage"] == 0.5
    assert "epoch   1/1" in result.stdout


@pytest.mark.slow
def test_cifar_type_training_with_augmentation_end_to_end(tmp_path, monkeypatch):
    from formats import patch_md5, write_cifar10
    patch_md5(monkeypatch)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 120)
    write_cifar10(tmp_path / "data", images[:100], labels[:100], images[100:], labels[100:])
    # On the CPU on every machine: the model is compared with the checkpoint, which loads on the CPU.
    model = ALP.main(["resnet20", "cifar10", "--epochs=2", "-b=25", "--steps=1", "--eval-freq=2", "--device=cpu",
                      "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs")])
    run = run_folder(tmp_path / "runs")
    state = load_checkpoint(os.path.join(run, "last.pt"))
    assert state["epoch"] == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state["model"].items())
    assert [r["clean_accuracy"] is None for r in state["metrics"]] == [True, False]  # --eval-freq=2


@pytest.mark.slow
def test_training_on_the_real_mnist_split_learns(mnist_stand_in_root, tmp_path):
    result = alp_cli(*QUICK, "--epochs=3", "--subset=1000", "--eval-freq=3",
                     "--data-root", mnist_stand_in_root, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(os.path.join(run_folder(tmp_path), "last.pt"))
    assert state["metrics"][-1]["clean_accuracy"] > 0.5  # 10 classes: chance is 0.1


# The run kills itself with SIGKILL right after epoch 2's last.pt is renamed into place, before metrics.csv and
# log.txt get epoch 2: the worst moment, chosen without a race.
KILLED_AFTER_EPOCH_2_CHECKPOINT = """
import os, signal, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import ALP
import training.loop
import training.run_folder
from conftest import cheap_validation_attack
training.loop.validation_attack = cheap_validation_attack
save = training.run_folder.save_checkpoint
def save_then_die(state, path):
    save(state, path)
    if path.endswith("last.pt") and state["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
training.run_folder.save_checkpoint = save_then_die
ALP.main({argv!r})
"""

KILL_TEST_ARGS = [*QUICK, "--epochs=3", "--subset=100", "--eval-freq=2", "--no-amp"]  # bit-exact: float32


@pytest.fixture(scope="module")
def killed_and_resumed(synthetic_mnist_root, tmp_path_factory):
    """Run folders of the same run: "a" uninterrupted, "b" killed after epoch 2's checkpoint and resumed,
    "killed" a copy of b as the kill left it."""
    base = tmp_path_factory.mktemp("kill")
    args = [*KILL_TEST_ARGS, "--data-root", str(synthetic_mnist_root)]
    uninterrupted = alp_cli(*args, "--out", base / "a")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    code = KILLED_AFTER_EPOCH_2_CHECKPOINT.format(root=str(ROOT), tests=str(ROOT / "tests"),
                                                  argv=[*args, "--out", str(base / "b")])
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    shutil.copytree(base / "b", base / "killed")
    resumed = alp_cli(*args, "--out", base / "b", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    return {name: run_folder(base / name) for name in ("a", "b", "killed")} | {"resumed": resumed}


def read_csv_rows(run):
    with open(os.path.join(run, "metrics.csv")) as f:
        return [dict(row, seconds=None, validation_seconds=None) for row in csv.DictReader(f)]


def epoch_lines(run):
    """The log's epoch lines without their durations."""
    with open(os.path.join(run, "log.txt")) as f:
        return [line.rsplit(" | ", 1)[0] for line in f.read().splitlines() if line.startswith("epoch ")]


@pytest.mark.slow
def test_the_kill_left_metrics_and_log_an_epoch_behind_the_checkpoint(killed_and_resumed):
    killed = killed_and_resumed["killed"]
    assert load_checkpoint(os.path.join(killed, "last.pt"))["epoch"] == 2
    assert len(read_csv_rows(killed)) == 1 and len(epoch_lines(killed)) == 1


@pytest.mark.slow
def test_a_run_killed_after_its_checkpoint_resumes_to_the_same_weights_metrics_and_log(killed_and_resumed):
    a, b = killed_and_resumed["a"], killed_and_resumed["b"]
    assert "resuming" in killed_and_resumed["resumed"].stdout and "at epoch 3/3" in killed_and_resumed["resumed"].stdout
    state_a, state_b = (load_checkpoint(os.path.join(run, "last.pt")) for run in (a, b))
    assert all(torch.equal(state_a["model"][k], state_b["model"][k]) for k in state_a["model"])
    untimed = [[dict(r, seconds=None, validation_seconds=None) for r in s["metrics"]] for s in (state_a, state_b)]
    assert untimed[0] == untimed[1]
    assert read_csv_rows(b) == read_csv_rows(a) and len(read_csv_rows(a)) == 3
    assert epoch_lines(b) == epoch_lines(a) and len(epoch_lines(a)) == 3
    assert "restored from last.pt" in killed_and_resumed["resumed"].stdout
    assert not [name for name in os.listdir(b) if name.endswith(".tmp")]


@pytest.mark.slow
def test_a_run_estimates_its_time_and_a_resumed_run_that_of_the_epochs_left(killed_and_resumed):
    with open(os.path.join(killed_and_resumed["a"], "log.txt")) as f:
        (first,) = [line for line in f.read().splitlines() if line.startswith("estimated: ")]
    assert " per validation (2 validated epochs), " in first and " for 3 epochs (timed on " in first  # --eval-freq=2
    (again,) = [line for line in killed_and_resumed["resumed"].stdout.splitlines() if line.startswith("estimated: ")]
    assert " per epoch (training " in again and " for the 1 epoch left (timed on " in again


@pytest.mark.slow
def test_resume_appends_to_args_json_what_was_in_force(killed_and_resumed):
    with open(os.path.join(killed_and_resumed["b"], "args.json")) as f:
        runs = json.load(f)["runs"]
    assert [run["args"]["resume"] for run in runs] == [False, True]
    for run in runs:
        in_force = run["in_force"]
        assert in_force["device"] == "cpu" and in_force["world_size"] == 1 and in_force["torch"] == torch.__version__
        assert not in_force["amp"] and in_force["channels_last"] and not in_force["cudnn_benchmark"]  # --no-amp
        assert not run["args"]["cudnn_benchmark"]  # what ran on the CPU, not the default asked for
    assert runs[0]["in_force"]["data_digest"] == runs[1]["in_force"]["data_digest"]


@pytest.mark.slow
def test_a_finished_run_grown_by_an_epoch_ends_with_the_weights_of_a_run_started_with_that_many(
        killed_and_resumed, synthetic_mnist_root, tmp_path, cheap_validation, capsys):
    args = [*KILL_TEST_ARGS, "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)]
    short = [a if a != "--epochs=3" else "--epochs=2" for a in args]  # epoch 2 validated in both (--eval-freq=2)
    ALP.main(short)
    ALP.main([*args, "--resume"])  # the constant (null) schedule lets it grow
    grown = run_folder(tmp_path)
    assert grown == run_folder_of(args) and "the run grows from 2 to 3 epochs" in capsys.readouterr().out
    state, uninterrupted = (load_checkpoint(os.path.join(run, "last.pt"))
                            for run in (grown, killed_and_resumed["a"]))
    assert all(torch.equal(state["model"][k], uninterrupted["model"][k]) for k in uninterrupted["model"])
    assert read_csv_rows(grown) == read_csv_rows(killed_and_resumed["a"])
    assert [line.replace("/2 |", "/3 |") for line in epoch_lines(grown)] == epoch_lines(killed_and_resumed["a"])


@pytest.mark.slow
def test_resume_on_other_data_is_refused_whatever_the_data_root(killed_and_resumed, tmp_path, capsys):
    from formats import synthetic_digits, write_mnist
    images, labels = synthetic_digits(800, seed=5)
    write_mnist(tmp_path / "other", images[:600], labels[:600], images[600:], labels[600:])
    out = tmp_path / "runs"
    shutil.copytree(killed_and_resumed["killed"], out / os.path.basename(killed_and_resumed["killed"]))
    with pytest.raises(SystemExit) as stop:
        ALP.main([*KILL_TEST_ARGS, "--data-root", str(tmp_path / "other"), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "differs from the data" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_last_checkpoint(synthetic_mnist_root, tmp_path,
                                                                                 monkeypatch, capsys):
    calls = {"n": 0}
    alp_loss = training.alp.alp_loss

    def loss_turning_nan_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        loss, logits = alp_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 4 + 3 else loss), logits  # 4 batches/epoch: epoch 2, batch 3

    monkeypatch.setattr(training.alp, "alp_loss", loss_turning_nan_in_epoch_2)
    with pytest.raises(SystemExit) as stop:
        ALP.main([*QUICK, "--epochs=3", "--eval-freq=5", "--subset=200", "--data-root",
                  str(synthetic_mnist_root), "--out", str(tmp_path)])
    assert stop.value.code == 1
    assert "epoch 2, batch 3" in capsys.readouterr().err
    state = load_checkpoint(os.path.join(run_folder(tmp_path), "last.pt"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("argv, message", [
    (["nonet", "mnist"], "invalid choice: 'nonet'"),
    (["mnist", "imagenet"], "invalid choice: 'imagenet'"),
    (["mnist", "mnist", "-lp=fancy"], "invalid choice: 'fancy'"),
    (["mnist", "mnist", "--optimizer=lion"], "invalid choice: 'lion'"),
    (["mnist", "mnist", "--epsilon=0"], "--epsilon must be > 0"),
    (["mnist", "mnist", "--epsilon=-0.1"], "--epsilon must be > 0"),
    (["mnist", "mnist", "--steps=0"], "--steps must be > 0"),
    (["mnist", "mnist", "-b=0"], "--batch_size must be > 0"),
    (["mnist", "mnist", "--epochs=0"], "--epochs must be > 0"),
    (["mnist", "mnist", "--leverage=-1"], "--leverage must be >= 0"),
    (["mnist", "mnist", "--ratio=1"], "--ratio must lie in [0, 1)"),
    (["mnist", "mnist", "--ratio=-0.1"], "--ratio must lie in [0, 1)"),
    (["mnist", "mnist", "--steps=ten"], "invalid int value"),
])
def test_bad_input_is_one_line_and_exit_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_data_root_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as stop:
        parse_args(["mnist", "mnist", "--data-root", str(tmp_path / "file")])
    assert stop.value.code == 2 and "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_data_without_network_is_one_clear_line(tmp_path):
    # urlopen fails at once, so the test behaves the same with or without a network and never waits on DNS.
    code = ("import urllib.request, sys, runpy; "
            "urllib.request.urlopen = lambda *a, **k: (_ for _ in ()).throw(OSError('no network')); "
            f"sys.argv = ['ALP.py', 'mnist', 'mnist', '--data-root', {str(tmp_path / 'empty')!r}, "
            f"'--out', {str(tmp_path / 'runs')!r}]; runpy.run_path({str(ROOT / 'ALP.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert "mnist" in last and str(tmp_path / "empty" / "MNIST") in last and "download" in last


def test_checkpoint_needing_code_is_refused_on_resume(tmp_path, capsys):
    args = [*QUICK, "--epochs=1", "--subset=100", "--data-root", str(tmp_path / "no-data"), "--out", str(tmp_path)]
    run_dir = run_folder_of(args)
    os.makedirs(run_dir)
    torch.save({"model": {}, "meta": {}, "payload": np.random.default_rng(0)},  # needs numpy code to load
               os.path.join(run_dir, "last.pt"))
    with pytest.raises(SystemExit) as stop:
        ALP.main([*args, "--resume"])
    assert stop.value.code == 2 and "needs code to load" in capsys.readouterr().err


def test_compile_serves_the_training_step_alone_with_static_shapes_and_says_it_is_slower_on_a_cpu(
        synthetic_mnist_root, tmp_path, monkeypatch, cheap_validation):
    """CPU (the compiler faked): validation runs the network itself, so the compiled network holds only the
    step's graphs (a validation first would compile an eval-mode, no-grad pass at another batch size, and
    make dynamo mark the batch dimension dynamic)."""
    compiled = []

    class CompiledStandIn(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self._orig_mod, self.grad_enabled = model, []

        def forward(self, x):
            self.grad_enabled.append(torch.is_grad_enabled())
            return self._orig_mod(x)

    def fake_compile(model, **options):
        compiled.append((CompiledStandIn(model), options))
        return compiled[-1][0]
    monkeypatch.setattr(torch, "compile", fake_compile)
    ALP.main([*QUICK, "--epochs=1", "--subset=100", "--compile", "--data-root", str(synthetic_mnist_root),
              "--out", str(tmp_path)])
    ((net, options),) = compiled
    assert options == {"dynamic": False}
    assert net.grad_enabled and all(net.grad_enabled)  # the attack's and the loss's passes, no validation pass
    with open(os.path.join(run_folder(tmp_path), "log.txt")) as f:
        assert f.read().count("--compile: on a CPU the compiled step is usually slower") == 1
