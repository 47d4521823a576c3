"""ALP training: the loss, the training step, and ALP.py end to end (run folder, resume, bad input)."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ALP
import training
from attacks import ATTACKS
from conftest import ROOT
from models import MODELS
from checkpoints import load_checkpoint

QUICK = ["-lp=null", "-lr=0.001", "-wd=0", "--optimizer=adam", "-b=50", "--epsilon=0.3", "--steps=3",
         "--stepsize=0.1", "--leverage=0.5"]


def run_folder(out):
    (name,) = os.listdir(out)
    return os.path.join(out, name)


def alp_cli(*args, **kwargs):
    return subprocess.run([sys.executable, str(ROOT / "ALP.py"), *map(str, args)], capture_output=True,
                          text=True, **kwargs)


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
    model.stem[1].register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    model.train()
    training.alp_loss(model, x, x_adv, y, 0.5)
    assert seen == [len(x), len(x)]


def test_train_step_attacks_in_eval_mode_and_trains_in_train_mode():
    model, x, y = tiny_batch()
    modes = []
    model.stem[1].register_forward_hook(lambda m, inp, out: modes.append(m.training))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    training.train_step(model, model, ATTACKS["pgd-linf"](8 / 255, steps=2, stepsize=2 / 255), optimizer, x, y, 0.5)
    assert modes == [False, False, True, True]  # 2 attack steps, then the clean and adversarial passes


def test_a_few_alp_steps_lower_the_loss_on_a_fixed_batch():
    model, x, y = tiny_batch(n=16)
    attack = ATTACKS["pgd-linf"](4 / 255, steps=2, stepsize=2 / 255)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    losses = [training.train_step(model, model, attack, optimizer, x, y, 0.5)[0].item() for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0]


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


def test_one_epoch_end_to_end_writes_the_run_folder(synthetic_mnist_root, tmp_path):
    result = alp_cli("mnist", "mnist", *QUICK, "--epochs=1", "--subset=200", "--data-root", synthetic_mnist_root,
                     "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    run = run_folder(tmp_path)
    assert os.path.basename(run).startswith("mnist-mnist-ALP-lev0.5-pgd-linf-eps0.3-steps3")
    for name in ("args.json", "log.txt", "metrics.csv", "curves.png", "last.pt", "best_clean.pt", "best_robust.pt"):
        assert os.path.isfile(os.path.join(run, name)), name
    with open(os.path.join(run, "metrics.csv")) as f:
        (row,) = list(csv.DictReader(f))
    assert 0 <= float(row["clean_accuracy"]) <= 1 and 0 <= float(row["robust_accuracy"]) <= 1
    state = load_checkpoint(os.path.join(run, "best_robust.pt"))
    assert state["meta"]["model"] == "mnist" and state["meta"]["dataset"] == "mnist"
    assert state["meta"]["num_classes"] == 10 and state["meta"]["args"]["leverage"] == 0.5
    assert "epoch   1/1" in result.stdout


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


def test_training_on_the_real_mnist_split_learns(mnist_stand_in_root, tmp_path):
    result = alp_cli("mnist", "mnist", *QUICK, "--epochs=3", "--subset=1000", "--eval-freq=3",
                     "--data-root", mnist_stand_in_root, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(os.path.join(run_folder(tmp_path), "last.pt"))
    assert state["metrics"][-1]["clean_accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_killed_and_resumed_run_ends_with_the_same_weights(synthetic_mnist_root, tmp_path):
    args = ["mnist", "mnist", *QUICK, "--epochs=5", "--subset=400", "--eval-freq=2",
            "--data-root", synthetic_mnist_root]
    uninterrupted = alp_cli(*args, "--out", tmp_path / "a")
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    killed = subprocess.Popen([sys.executable, str(ROOT / "ALP.py"), *map(str, args), "--out", str(tmp_path / "b")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "b").glob("*/metrics.csv")) and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    stopped_at = load_checkpoint(str(next((tmp_path / "b").glob("*/last.pt"))))["epoch"]
    assert stopped_at < 5

    resumed = alp_cli(*args, "--out", tmp_path / "b", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and f"at epoch {stopped_at + 1}/5" in resumed.stdout
    a = load_checkpoint(os.path.join(run_folder(tmp_path / "a"), "last.pt"))
    b = load_checkpoint(os.path.join(run_folder(tmp_path / "b"), "last.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["metrics"] == [dict(r, seconds=r2["seconds"]) for r, r2 in zip(b["metrics"], a["metrics"])]


def test_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_last_checkpoint(synthetic_mnist_root, tmp_path,
                                                                                 monkeypatch, capsys):
    calls = {"n": 0}
    alp_loss = training.alp_loss

    def loss_turning_nan_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        loss, logits = alp_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 4 + 3 else loss), logits  # 4 batches/epoch: epoch 2, batch 3

    monkeypatch.setattr(training, "alp_loss", loss_turning_nan_in_epoch_2)
    with pytest.raises(SystemExit) as stop:
        ALP.main(["mnist", "mnist", *QUICK, "--epochs=3", "--subset=200", "--data-root", str(synthetic_mnist_root),
                  "--out", str(tmp_path)])
    assert stop.value.code == 1
    assert "epoch 2, batch 3" in capsys.readouterr().err
    state = load_checkpoint(os.path.join(run_folder(tmp_path), "last.pt"))
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


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
        ALP.parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_unknown_model_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        ALP.parse_args(["nonet", "mnist"])
    err = capsys.readouterr().err
    assert all(name in err for name in MODELS)


def test_data_root_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as stop:
        ALP.parse_args(["mnist", "mnist", "--data-root", str(tmp_path / "file")])
    assert stop.value.code == 2 and "is a file" in capsys.readouterr().err


def test_resume_with_nothing_to_resume_is_refused(tmp_path):
    result = alp_cli("mnist", "mnist", "--resume", "--out", tmp_path, "--data-root", tmp_path)
    assert result.returncode == 2
    assert "nothing to resume" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


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


def test_checkpoint_needing_code_is_refused_on_resume(synthetic_mnist_root, tmp_path):
    args = ["mnist", "mnist", *QUICK, "--epochs=1", "--subset=100", "--data-root", synthetic_mnist_root,
            "--out", tmp_path]
    assert alp_cli(*args).returncode == 0
    last = os.path.join(run_folder(tmp_path), "last.pt")
    torch.save({"model": {}, "meta": {}, "payload": np.random.default_rng(0)}, last)  # needs numpy code to load
    result = alp_cli(*args, "--resume")
    assert result.returncode == 2 and "need code to load" in result.stderr
    assert "Traceback" not in result.stderr
