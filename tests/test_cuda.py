"""CUDA only (every test is skipped without a CUDA device): the graph-replayed ALP iteration against the eager
one, bf16 training through the graph, and resume on CUDA through ALP.py. Written without a GPU at hand: the
first machine with one runs them for the first time."""
import json
from contextlib import nullcontext

import pytest
import torch
from torch.optim.lr_scheduler import MultiStepLR

import ALP
import training.loop
from attacks.pgd import PGD
from checkpoints import load_checkpoint
from data import DeviceLoader
from models import MODELS
from cuda_graph import CUDAGraphRecorder, GraphedStep
from conftest import QUICK, alp_iteration, run_epoch
from training import EpochTally, mixed_precision, train_step
from optimization import OPTIMIZERS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = torch.device("cuda")
BATCH = 16
# Epoch 1 of the graph path: 3 eager warm-ups, the capture (and its replay), one more replay, the smaller
# last batch eagerly; epoch 2: 5 replays and the eager last batch.
IMAGES = (GraphedStep.WARMUP + 2) * BATCH + 7
LR = 2.0 ** -4  # exact in float32, like the tensor learning rate the graph reads


class Killed(Exception):
    pass


@pytest.fixture
def deterministic_cudnn():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def cifar_setup(random_start, channels_last=False):
    """(model, fused SGD, scheduler halving the rate after epoch 1, PGD, loader), all on DEVICE."""
    torch.manual_seed(0)
    model = MODELS["resnet20"](num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3).to(DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = OPTIMIZERS["sgd"](model.parameters(), lr=LR, weight_decay=2.0 ** -12, momentum=0.9,
                                  fused=True)
    scheduler = MultiStepLR(optimizer, milestones=[1], gamma=0.5)
    attack = PGD(8 / 255, "linf", steps=3, stepsize=2 / 255, random_start=random_start)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 3, 32, 32), generator=generator, device=DEVICE, dtype=torch.uint8)
    labels = torch.randint(0, 10, (IMAGES,), generator=generator, device=DEVICE)
    loader = DeviceLoader(images, labels, BATCH, DEVICE, shuffle=True, crop=True, flip=True, seed=0,
                          channels_last=channels_last)
    return model, optimizer, scheduler, attack, loader


def train_two_epochs(graphed, random_start, compiled=False):
    model, optimizer, scheduler, attack, loader = cifar_setup(random_start)
    if graphed:
        net = torch.compile(model) if compiled else model
        step = GraphedStep(alp_iteration(attack, optimizer, 0.5, nullcontext), net, net, optimizer, nullcontext, BATCH)
    else:
        def step(x, y):
            return train_step(model, model, attack, optimizer, x, y, 0.5)
    torch.cuda.manual_seed(1)  # the crops, flips and PGD starts draw from this generator on both paths
    totals = []
    for epoch in range(2):
        totals.append(run_epoch(step, loader, epoch).totals)
        scheduler.step()
    return model, step, totals


@pytest.mark.parametrize("random_start", [False, True])
def test_graph_replayed_iterations_compute_what_eager_ones_do(random_start, deterministic_cudnn):
    eager_model, _, eager_totals = train_two_epochs(False, random_start)
    model, step, totals = train_two_epochs(True, random_start)
    assert step.graph is not None
    ours, theirs = model.state_dict(), eager_model.state_dict()
    for key in ours:  # weights and BatchNorm statistics; float tolerance: kernels may sum in another order
        if ours[key].is_floating_point():
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(ours[key], theirs[key]), key  # num_batches_tracked: every batch counted
    for ours, theirs in zip(totals, eager_totals):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        assert ours[2].item() == IMAGES


def test_a_compiled_network_recorded_in_the_graph_trains_like_the_eager_one(deterministic_cudnn):
    """torch.compile's kernels sum in their own order, and a PGD sign may flip on a rounding difference: the
    weights must agree to 1% of their norm, the losses to 1%."""
    torch._dynamo.reset()
    eager_model, _, eager_totals = train_two_epochs(False, random_start=True)
    model, step, totals = train_two_epochs(True, random_start=True, compiled=True)
    assert step.graph is not None and step.capture_failure is None and step.compile_failure is None
    floats = [key for key, value in model.state_dict().items() if value.is_floating_point()]
    ours, theirs = (torch.cat([m.state_dict()[key].flatten() for key in floats]) for m in (model, eager_model))
    assert (ours - theirs).norm() <= 0.01 * theirs.norm()
    for ours, theirs in zip(totals, eager_totals):
        assert ours[0].item() == pytest.approx(theirs[0].item(), rel=0.01)  # the loss sums
        assert ours[2].item() == IMAGES


def train_side_by_side(attack_wrapper, lines):
    """(the GraphedStep, its model, the eager model) after two epochs each, both attacks wrapped by
    `attack_wrapper`."""
    model, optimizer, scheduler, attack, loader = cifar_setup(random_start=True)
    step = GraphedStep(alp_iteration(attack_wrapper(attack), optimizer, 0.5, nullcontext), model, model, optimizer,
                       nullcontext, BATCH, log=lines.append)
    eager_model, eager_optimizer, eager_scheduler, eager_attack, eager_loader = cifar_setup(random_start=True)
    eager_attack = attack_wrapper(eager_attack)
    for run_step, run_loader, run_scheduler in (
            (step, loader, scheduler),
            (lambda x, y: train_step(eager_model, eager_model, eager_attack, eager_optimizer, x, y, 0.5),
             eager_loader, eager_scheduler)):
        torch.cuda.manual_seed(1)
        for epoch in range(2):
            assert run_epoch(run_step, run_loader, epoch).totals[2].item() == IMAGES
            run_scheduler.step()
    return step, model, eager_model


def assert_close_weights(model, eager_model):
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, eager_model.state_dict()[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_step_that_reads_device_values_on_the_host_is_never_captured_and_trains_eagerly(deterministic_cudnn,
                                                                                         monkeypatch):
    """.item() inside the attack: fine eagerly, refused by a capture (a host sync); found in the first
    warm-up, so no capture is tried."""
    def syncing(attack):
        def attack_that_syncs(model, x, y):
            x.sum().item()
            return attack(model, x, y)
        return attack_that_syncs

    recordings = []
    monkeypatch.setattr(CUDAGraphRecorder, "record", lambda self, fn: recordings.append(fn))
    lines = []
    step, model, eager_model = train_side_by_side(syncing, lines)
    assert not recordings and step.graph is None and step.capture_failure is not None
    assert lines == ["CUDA graph: the step reads device values on the host (aten._local_scalar_dense x1), which a "
                     "CUDA graph cannot record; the eager step runs instead"]
    assert_close_weights(model, eager_model)


def test_a_capture_that_cuda_refuses_gives_the_random_generator_back_and_trains_eagerly(deterministic_cudnn):
    """.item() only while the stream is capturing: no warm-up shows it, the capture fails inside, and its end
    fails too, which leaves the CUDA generator marked as capturing unless GraphedStep gives it back."""
    def syncing_in_capture(attack):
        def attack_that_syncs_in_capture(model, x, y):
            if torch.cuda.is_current_stream_capturing():
                x.sum().item()
            return attack(model, x, y)
        return attack_that_syncs_in_capture

    lines = []
    step, model, eager_model = train_side_by_side(syncing_in_capture, lines)
    assert step.graph is None and step.capture_failure is not None
    assert len(lines) == 1 and lines[0].startswith("CUDA graph: recording it failed ("), lines
    assert torch.cuda.current_stream(DEVICE) == torch.cuda.default_stream(DEVICE)  # the capture stream let go
    assert torch.rand(3, device=DEVICE).shape == (3,)  # random draws work after the run too
    assert_close_weights(model, eager_model)  # the same random numbers: the failed capture drew none


def test_replayed_outputs_are_copies_the_next_replay_leaves_alone():
    model, optimizer, _, attack, loader = cifar_setup(random_start=True)
    step = GraphedStep(alp_iteration(attack, optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext, BATCH)
    x, y = next(loader.epoch())
    results = [step(x, y) for _ in range(GraphedStep.WARMUP + 3)]
    assert step.graph is not None
    losses = torch.stack([loss for loss, _ in results])
    assert losses.unique().numel() == len(losses)  # the weights move every iteration: no loss repeats
    assert all(loss.data_ptr() != step.outputs[0].data_ptr() for loss, _ in results)


def test_bf16_training_through_the_graph_learns_a_fixed_batch():
    model, optimizer, _, attack, loader = cifar_setup(random_start=True, channels_last=True)
    step = GraphedStep(alp_iteration(attack, optimizer, 0.5, mixed_precision("cuda", True)), model, model, optimizer,
                       mixed_precision("cuda", True), BATCH)
    x, y = next(loader.epoch())
    for group in optimizer.param_groups:
        group["lr"] = 0.05
    losses = [step(x, y)[0].item() for _ in range(15)]
    assert step.graph is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("flags", [["--no-cuda-graph"], []], ids=["eager", "graph"])  # the graph: CUDA's default
def test_resumed_cuda_run_ends_close_to_an_uninterrupted_one(flags, synthetic_mnist_root, tmp_path, monkeypatch,
                                                             capsys):
    """With bf16 and cudnn.benchmark on, as users run. Exact equality does not hold on CUDA (kernels may sum
    in another order, bf16 rounds): the weights must agree to 1% of their norm, the losses to 1%."""
    args = [*QUICK, "--epochs=3", "--subset=420", "--eval-freq=3", "--device=cuda",
            "--data-root", str(synthetic_mnist_root), *flags]
    ALP.main(args + ["--out", str(tmp_path / "a")])

    class DiesInEpoch2(EpochTally):
        started = 0

        def __init__(self, device):
            DiesInEpoch2.started += 1
            if DiesInEpoch2.started == 2:
                raise Killed
            super().__init__(device)

    with monkeypatch.context() as patch:
        patch.setattr(training.loop, "EpochTally", DiesInEpoch2)
        with pytest.raises(Killed):
            ALP.main(args + ["--out", str(tmp_path / "b")])
    ALP.main(args + ["--out", str(tmp_path / "b"), "--resume"])
    # Every start ran the step asked for: the eager one when switched off, the graph by default (neither
    # refused nor dropped after a failed recording).
    out = capsys.readouterr().out
    assert "--cuda-graph:" not in out and "CUDA graph:" not in out
    records = [json.loads(next((tmp_path / run).glob("*/args.json")).read_text()) for run in "ab"]
    starts = [start for record in records for start in record["runs"]]
    assert len(starts) == 3 and {start["in_force"]["cuda_graph"] for start in starts} == {flags == []}

    a, b = (load_checkpoint(str(next((tmp_path / run).glob("*/last.pt")))) for run in "ab")
    assert a["epoch"] == b["epoch"] == 3
    floats = [key for key in a["model"] if a["model"][key].is_floating_point()]
    weights_a, weights_b = (torch.cat([state["model"][key].flatten() for key in floats]) for state in (a, b))
    assert (weights_a - weights_b).norm() <= 0.01 * weights_a.norm()
    for row_a, row_b in zip(a["metrics"], b["metrics"]):
        assert row_b["train_loss"] == pytest.approx(row_a["train_loss"], rel=0.01)
