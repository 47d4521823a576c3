"""CPU (on every machine): a CUDA graph whose recording fails never ends a run. GraphedStep is given a
recorder that fails as a refused capture does; the run logs the cause once and ends with the eager step's
figures. The graph itself is tested on CUDA in tests/test_cuda.py."""
from contextlib import nullcontext
from functools import partial

import pytest
import torch

import ALP
from attacks import ATTACKS
from cuda_graph import GraphedStep
from data import DeviceLoader
from models import MODELS
from conftest import run_epoch
from training import train_step
from optimization import OPTIMIZERS

DEVICE = torch.device("cpu")
BATCH = 8
IMAGES = (GraphedStep.WARMUP + 3) * BATCH + 5  # warm-ups, the failed recording, later full batches, a short one
LR = 2.0 ** -4  # exact in float32, like the tensor learning rate of the warm-ups: the figures agree bit for bit
CAUSE = "operation not permitted when stream is capturing"


class RefusedCapture:
    """Warms up as the CUDA recorder does (minus the side stream) and fails to record, like an op that refuses
    capture; counts its recordings."""

    def __init__(self):
        self.recordings = 0

    def warm_up(self, fn):
        return fn()

    def record(self, fn):
        self.recordings += 1
        raise RuntimeError(f"CUDA error: {CAUSE}")


def train_two_epochs(make_step):
    torch.manual_seed(0)
    model = MODELS["resnet20"](num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    optimizer = OPTIMIZERS["sgd"](model.parameters(), lr=LR, weight_decay=0, momentum=0.9, fused=True)
    attack = ATTACKS["pgd-linf"](8 / 255, steps=2, stepsize=4 / 255)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 3, 16, 16), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (IMAGES,), generator=generator)
    loader = DeviceLoader(images, labels, BATCH, DEVICE, shuffle=True, crop=True, flip=True, seed=0)
    step = make_step(model, optimizer, attack)
    totals = []
    for epoch in range(2):
        torch.manual_seed(100 + epoch)  # the PGD starts
        totals.append(run_epoch(step, loader, epoch).totals)
    return model, totals


@pytest.mark.slow
def test_a_failed_recording_logs_its_cause_once_and_trains_like_the_eager_step():
    recorder, lines = RefusedCapture(), []
    model, totals = train_two_epochs(lambda model, optimizer, attack: GraphedStep(
        model, model, attack, optimizer, 0.5, nullcontext, BATCH, capture=True, log=lines.append, recorder=recorder))
    eager_model, eager_totals = train_two_epochs(lambda model, optimizer, attack: (
        lambda x, y: train_step(model, model, attack, optimizer, x, y, 0.5)))
    assert recorder.recordings == 1  # not retried at every batch
    assert lines == [f"--cuda-graph: recording the CUDA graph failed (RuntimeError: CUDA error: {CAUSE}); the "
                     f"eager step runs instead"]
    for key, value in model.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, eager_model.state_dict()[key]), key
    for ours, theirs in zip(totals, eager_totals):
        assert torch.equal(ours, theirs)
        assert ours[2].item() == IMAGES  # the batch whose recording failed was trained too


@pytest.mark.slow
def test_alp_run_whose_recording_fails_ends_with_the_eager_runs_figures(synthetic_mnist_root, tmp_path,
                                                                       monkeypatch, cheap_validation):
    """ALP.py --cuda-graph as on a GPU whose capture fails (the CPU's refusal of graphs switched off)."""
    args = ["mnist", "mnist", "--device=cpu", "-b=5", "--steps=1", "--epochs=1", "--subset=40", "-lr=0.0625",
            "--data-root", str(synthetic_mnist_root)]
    ALP.main(args + ["--out", str(tmp_path / "eager")])
    monkeypatch.setattr(ALP, "cuda_graph_refusal", lambda *_: None)
    monkeypatch.setattr(ALP, "GraphedStep", partial(GraphedStep, capture=True, recorder=RefusedCapture()))
    ALP.main(args + ["--out", str(tmp_path / "graph"), "--cuda-graph"])

    def logged(run):
        lines = next((tmp_path / run).glob("*/log.txt")).read_text().splitlines()
        return lines, [line.rsplit(" | ", 1)[0] for line in lines if line.startswith("epoch ")]  # less the seconds

    graph_lines, graph_epochs = logged("graph")
    assert sum("recording the CUDA graph failed (RuntimeError" in line for line in graph_lines) == 1
    eager_epochs = logged("eager")[1]
    assert graph_epochs == eager_epochs and len(eager_epochs) == 1
