"""cuda_graph.GraphedStep's plumbing without a graph, on the CPU (DEVICE) on every machine: static buffers,
copy-in, the eager last batch, the tensor learning rate, resume; the optimisers' kernels on resume; and
--cuda-graph where no graph can run. The captured graph itself is tested in tests/test_cuda.py."""
import json
import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from torch.optim.lr_scheduler import MultiStepLR

import ALP
import training.loop
from attacks import ATTACKS
from data import DeviceLoader
from models import MODELS
from cuda_graph import GraphedStep
from training import mixed_precision, train_step
from conftest import ROOT, alp_iteration, make_optimizer, run_epoch
from optimization import OPTIMIZERS

DEVICE = torch.device("cpu")
BATCH = 8
IMAGES = 4 * BATCH + 5  # the last batch of every epoch is smaller: it takes the eager step
# Learning rates that float32 holds exactly: the tensor learning rate is float32, the eager one a double, so
# only such rates let the two paths agree bit for bit.
LR, WEIGHT_DECAY = 2.0 ** -4, 2.0 ** -12


def tiny_setup(optimizer_name):
    """(model, fused optimizer, scheduler halving the rate after epoch 1, attack, loader) on DEVICE."""
    torch.manual_seed(0)
    model = MODELS["resnet20"](num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3).to(DEVICE)
    optimizer = make_optimizer(optimizer_name, model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    scheduler = MultiStepLR(optimizer, milestones=[1], gamma=0.5)
    attack = ATTACKS["pgd-linf"](8 / 255, steps=2, stepsize=4 / 255)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 3, 16, 16), generator=generator, device=DEVICE, dtype=torch.uint8)
    labels = torch.randint(0, 10, (IMAGES,), generator=generator, device=DEVICE)
    loader = DeviceLoader(images, labels, BATCH, DEVICE, shuffle=True, crop=True, flip=True, seed=0)
    return model, optimizer, scheduler, attack, loader


def make_step(kind, model, optimizer, attack):
    if kind == "graph plumbing":
        return GraphedStep(alp_iteration(attack, optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext,
                           BATCH, capture=False)
    return lambda x, y: train_step(model, model, attack, optimizer, x, y, 0.5)


def train(kind, optimizer_name, epochs, setup=None, first_epoch=0):
    """Trains `epochs` epochs; returns the setup and each epoch's (loss sum, correct, count)."""
    model, optimizer, scheduler, attack, loader = setup or tiny_setup(optimizer_name)
    step = make_step(kind, model, optimizer, attack)
    totals = []
    for epoch in range(first_epoch, first_epoch + epochs):
        torch.manual_seed(100 + epoch)  # the PGD starts
        tally = run_epoch(step, loader, epoch)
        assert tally.first_bad_batch.item() == -1
        totals.append(tally.totals)
        scheduler.step()
    return (model, optimizer, scheduler, attack, loader), totals


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
@pytest.mark.slow
def test_graph_plumbing_without_capture_trains_exactly_like_the_eager_step(optimizer_name):
    (eager_model, eager_optimizer, *_), eager_totals = train("eager", optimizer_name, epochs=2)
    (model, optimizer, *_), totals = train("graph plumbing", optimizer_name, epochs=2)
    # the rate halved after epoch 1 must have reached the tensor the fused kernel reads, else weights differ
    assert_same_state(model.state_dict(), eager_model.state_dict())  # BatchNorm statistics included
    for ours, theirs in zip(totals, eager_totals):
        assert torch.equal(ours, theirs)
        assert ours[2].item() == IMAGES  # every image, the smaller last batch too
    assert optimizer.param_groups[0]["lr"] == eager_optimizer.param_groups[0]["lr"] == LR / 2
    assert isinstance(optimizer.state_dict()["param_groups"][0]["lr"], float)  # what checkpoints and logs get


@pytest.mark.slow
def test_resumed_graph_plumbing_ends_with_the_weights_of_an_uninterrupted_run():
    (model, *_), _ = train("graph plumbing", "sgd", epochs=2)
    (first_model, first_optimizer, first_scheduler, *_), _ = train("graph plumbing", "sgd", epochs=1)
    saved = {"model": first_model.state_dict(), "optimizer": first_optimizer.state_dict(),
             "scheduler": first_scheduler.state_dict()}
    setup = tiny_setup("sgd")
    resumed_model, resumed_optimizer, resumed_scheduler, *_ = setup
    resumed_model.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    train("graph plumbing", "sgd", epochs=1, setup=setup, first_epoch=1)
    assert_same_state(resumed_model.state_dict(), model.state_dict())


def test_graphed_step_refuses_an_optimizer_that_is_not_fused():
    model, _, _, attack, _ = tiny_setup("sgd")
    optimizer = OPTIMIZERS["sgd"](model.parameters(), lr=0.1, weight_decay=0, momentum=0.9)
    with pytest.raises(ValueError, match="fused"):
        GraphedStep(alp_iteration(attack, optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext, BATCH,
                    capture=False)


@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("saved_fused, loading_fused", [(True, False), (False, True)])
def test_resume_keeps_the_loading_optimizers_kernel_and_all_its_state(name, saved_fused, loading_fused):
    def optimizer(fused):
        params = [torch.nn.Parameter(torch.arange(4.0, device=DEVICE))]
        return make_optimizer(name, params, lr=0.1, weight_decay=1e-3, betas=(0.9, 0.99), fused=fused)

    saved = optimizer(saved_fused)
    for _ in range(2):
        saved.param_groups[0]["params"][0].grad = torch.ones(4, device=DEVICE)
        saved.step()
    loading = optimizer(loading_fused)
    loading.load_state_dict(saved.state_dict())
    assert loading.param_groups[0]["fused"] == (True if loading_fused else None)
    (saved_state,), (loaded_state,) = saved.state.values(), loading.state.values()
    assert saved_state.keys() == loaded_state.keys()
    for key in saved_state:
        assert torch.equal(saved_state[key].float(), loaded_state[key].float()), key
    loading.param_groups[0]["params"][0].grad = torch.ones(4, device=DEVICE)
    loading.step()  # the loaded state suits the loading kernel (Adam's step counter lives on the device if fused)


def test_mixed_precision_never_caches_weight_casts():
    with mixed_precision("cpu", True)():
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()
    assert mixed_precision("cpu", False) is nullcontext


@pytest.mark.slow
def test_cuda_graph_flag_on_the_cpu_says_so_and_trains_eagerly(synthetic_mnist_root, tmp_path, capsys):
    ALP.main(["mnist", "mnist", "--device=cpu", "--cuda-graph", "-b=5", "--steps=1", "--epochs=1", "--subset=10",
              "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "--cuda-graph: CUDA graphs need a CUDA device; the eager step runs instead" in out
    assert "epoch   1/1" in out
    (record,) = tmp_path.glob("*/args.json")
    assert json.loads(record.read_text())["runs"][0]["args"]["cuda_graph"] is False  # what ran, not what was asked


@pytest.mark.parametrize("flags, graph", [([], True), (["--no-cuda-graph"], False), (["--cuda-graph"], True)])
def test_the_graph_step_runs_by_default_where_a_graph_can_run_and_no_cuda_graph_switches_it_off(
        flags, graph, synthetic_mnist_root, tmp_path, monkeypatch, capsys, cheap_validation):
    """CPU, as on a GPU: the refusal of graphs off the GPU switched off, the graph step without a capture."""
    built = []
    monkeypatch.setattr(training.loop, "cuda_graph_refusal", lambda *_: None)

    class UncapturedStep(GraphedStep):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs, capture=False)

    monkeypatch.setattr(training.loop, "GraphedStep", UncapturedStep)
    ALP.main(["mnist", "mnist", "--device=cpu", "-b=5", "--steps=1", "--epochs=1", "--subset=10", *flags,
              "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)])
    (record,) = tmp_path.glob("*/args.json")
    (start,) = json.loads(record.read_text())["runs"]
    assert bool(built) == graph and start["args"]["cuda_graph"] is start["in_force"]["cuda_graph"] is graph
    assert "--cuda-graph:" not in capsys.readouterr().out


@pytest.mark.slow
def test_off_the_gpu_the_default_runs_the_eager_step_without_a_word(synthetic_mnist_root, tmp_path, capsys,
                                                                     cheap_validation):
    ALP.main(["mnist", "mnist", "--device=cpu", "-b=5", "--steps=1", "--epochs=1", "--subset=10",
              "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)])
    assert "--cuda-graph" not in capsys.readouterr().out
    (record,) = tmp_path.glob("*/args.json")
    assert json.loads(record.read_text())["runs"][0]["in_force"]["cuda_graph"] is False


def test_training_starts_without_the_evaluation_engine():
    """CPU. ALP.py reads the suite's tables and the one-class check, not the engine that runs eval.py's
    attacks (its units, their store and their width): a training run needs none of it."""
    code = ("import sys; sys.argv[0] = 'ALP.py'; import ALP; "
            "print(sorted(m for m in sys.modules if m.startswith('evaluation')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert "'evaluation.suite'" in loaded.stdout, loaded.stdout  # the listing works: the tables are there
    for module in ("engine", "units", "store", "width"):
        assert f"evaluation.{module}" not in loaded.stdout, loaded.stdout
