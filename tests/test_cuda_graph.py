"""CPU (on every machine): what the CUDA-graph step does around the graph, with the graph faked. A recorder
that fails as a refused capture does, leaving the random generator as CUDA leaves it; a step that reads
device values on the host, found before any capture; a compiled network through the step; the time estimate
after the warm-ups and the capture. The graph itself is tested on CUDA in tests/test_cuda.py."""
from contextlib import nullcontext
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ALP
import training.clock
import training.loop
from attacks import ATTACKS
from cuda_graph import GraphedStep, HostReads
from data import DeviceLoader
from models import MODELS
from conftest import alp_iteration, make_optimizer, run_epoch
from training import mixed_precision, train_step
from training.clock import BatchClock
from training.hyp import HYP
from optimization import OPTIMIZERS

DEVICE = torch.device("cpu")
BATCH = 8
IMAGES = (GraphedStep.WARMUP + 3) * BATCH + 5  # warm-ups, the failed recording, later full batches, a short one
LR = 2.0 ** -4  # exact in float32, like the tensor learning rate of the warm-ups: the figures agree bit for bit
CAUSE = "operation not permitted when stream is capturing"
POISON = "Offset increment outside graph capture encountered unexpectedly."


class RandomDrawsRaise(TorchDispatchMode):
    """Every random op raises, as every one does on a CUDA device whose generator a refused capture left
    marked as capturing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.nondeterministic_seeded in func.tags:
            raise RuntimeError(POISON)
        return func(*args, **(kwargs or {}))


class GeneratorState:
    def __init__(self, capturing):
        self.capturing = capturing


class StandInGenerator:
    """torch.cuda.default_generators[i], on the CPU, with what a capture does to it. A CUDA capture marks the
    generator's state as capturing and unmarks it only when the capture ends cleanly; while the mark stays,
    every random draw outside a capture raises, and seeding does not lift it. Here the mark makes the CPU's
    random draws raise the same way, until graphsafe_set_state puts in an unmarked state (clone_state's copies
    are unmarked, as CUDA's are)."""

    def __init__(self):
        self.state, self.poison = GeneratorState(capturing=False), None

    def clone_state(self):
        return GeneratorState(capturing=False)

    def graphsafe_set_state(self, state):
        self.state = state
        self.mark(state.capturing)

    def capture_refused(self):
        self.state.capturing = True  # set when the capture began; the failed end left it
        self.mark(True)

    def mark(self, capturing):
        if capturing and self.poison is None:
            self.poison = RandomDrawsRaise()
            self.poison.__enter__()
        elif not capturing and self.poison is not None:
            self.poison.__exit__(None, None, None)
            self.poison = None


class UnrecoverableGenerator(StandInGenerator):
    """A generator that no state put in makes usable again (a PyTorch whose state swap does not reach it)."""

    def graphsafe_set_state(self, state):
        pass


@pytest.fixture
def generator():
    stand_in = StandInGenerator()
    yield stand_in
    stand_in.mark(False)  # never leave the poison to later tests


class RefusedCapture:
    """Warms up as the CUDA recorder does (minus the side stream) and fails to record as a refused capture
    does: the op's error, then the capture end's, with the generator left marked; counts its recordings."""

    def __init__(self, generator):
        self.generator, self.recordings = generator, 0

    def warm_up(self, fn):
        return fn()

    def record(self, fn):
        self.recordings += 1
        self.generator.capture_refused()
        try:
            raise RuntimeError(f"CUDA error: {CAUSE}")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


class ReplayedIteration:
    def __init__(self, fn, outputs, clock=None):
        self.fn, self.outputs, self.replays, self.clock = fn, outputs, 0, clock

    def replay(self):
        self.replays += 1
        if self.replays > 1:  # the first replay is the recorded iteration itself
            for static, new in zip(self.outputs, self.fn()):
                static.copy_(new)
        if self.clock:
            self.clock.advance(ReplayingRecorder.REPLAY_SECONDS)


class ReplayingRecorder:
    """A capture that succeeds, on the CPU: recording runs the iteration once (what the capture and its first
    replay do together on CUDA), each later replay runs it again into the recorded outputs. With a fake
    `clock`, a warm-up or the recording takes 10 s (compilation, cudnn's benchmarks), a replay 1 s."""
    REPLAY_SECONDS, ONE_OFF_SECONDS = 1.0, 10.0

    def __init__(self, generator, clock=None):
        self.generator, self.clock, self.recordings = generator, clock, 0

    def warm_up(self, fn):
        if self.clock:
            self.clock.advance(self.ONE_OFF_SECONDS)
        return fn()

    def record(self, fn):
        self.recordings += 1
        if self.clock:
            self.clock.advance(self.ONE_OFF_SECONDS - self.REPLAY_SECONDS)  # its replay follows
        outputs = fn()
        return ReplayedIteration(fn, outputs, self.clock), outputs


def tiny_setup():
    """(model, fused SGD, PGD-2, one batch): a network small enough for the cheap tests, with BatchNorm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 10))
    optimizer = OPTIMIZERS["sgd"](model.parameters(), lr=LR, weight_decay=0, momentum=0.9, fused=True)
    attack = ATTACKS["pgd-linf"](8 / 255, steps=2, stepsize=4 / 255)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(BATCH, 3, 8, 8, generator=generator), torch.randint(0, 10, (BATCH,), generator=generator)
    return model, optimizer, attack, x, y


def train_tiny(make_step, batches):
    model, optimizer, attack, x, y = tiny_setup()
    step = make_step(model, optimizer, attack)
    torch.manual_seed(1)  # the PGD starts
    losses = [step(x, y)[0] for _ in range(batches)]
    return model, step, torch.stack(losses)


def eager_step(model, optimizer, attack, attack_wrapper=lambda attack: attack):
    return lambda x, y: train_step(model, model, attack_wrapper(attack), optimizer, x, y, 0.5)


def assert_same_weights(model, other, **tolerance):
    for key, value in model.state_dict().items():  # weights and BatchNorm statistics
        if tolerance and value.is_floating_point():
            torch.testing.assert_close(value, other.state_dict()[key], msg=key, **tolerance)
        else:
            assert torch.equal(value, other.state_dict()[key]), key


def test_the_stand_in_generator_is_poisoned_by_a_refused_capture_as_cuda_is(generator):
    with pytest.raises(RuntimeError):
        RefusedCapture(generator).record(lambda: None)
    torch.manual_seed(0)  # seeding does not lift the mark on CUDA either
    with pytest.raises(RuntimeError, match=POISON):
        torch.rand(2)
    generator.graphsafe_set_state(generator.clone_state())
    assert torch.rand(2).shape == (2,)


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
def test_a_failed_recording_logs_its_cause_once_and_trains_like_the_eager_step(generator):
    recorder, lines = RefusedCapture(generator), []
    model, totals = train_two_epochs(lambda model, optimizer, attack: GraphedStep(
        alp_iteration(attack, optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext, BATCH,
        capture=True, log=lines.append, recorder=recorder))
    eager_model, eager_totals = train_two_epochs(lambda model, optimizer, attack: (
        lambda x, y: train_step(model, model, attack, optimizer, x, y, 0.5)))
    assert recorder.recordings == 1  # not retried at every batch
    assert lines == [f"CUDA graph: recording it failed (RuntimeError: CUDA error: {CAUSE}); the eager step runs "
                     f"instead"]
    assert_same_weights(model, eager_model)
    for ours, theirs in zip(totals, eager_totals):
        assert torch.equal(ours, theirs)
        assert ours[2].item() == IMAGES  # the batch whose recording failed was trained too


def test_a_failed_recording_gives_the_generator_back_and_the_eager_steps_figures(generator):
    recorder, lines = RefusedCapture(generator), []
    model, step, losses = train_tiny(lambda model, optimizer, attack: GraphedStep(
        alp_iteration(attack, optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext, BATCH,
        capture=True, log=lines.append,
        recorder=recorder), GraphedStep.UNTIMED + 2)
    eager_model, _, eager_losses = train_tiny(eager_step, GraphedStep.UNTIMED + 2)
    assert recorder.recordings == 1 and len(lines) == 1 and generator.poison is None
    assert torch.equal(losses, eager_losses)  # the PGD starts drew the same numbers: the capture drew none
    assert_same_weights(model, eager_model)


def test_a_generator_left_unusable_stops_the_run_in_one_line_that_names_no_cuda_graph(capsys):
    generator = UnrecoverableGenerator()
    try:
        with pytest.raises(SystemExit) as stop:
            train_tiny(lambda model, optimizer, attack: GraphedStep(
                alp_iteration(attack, optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext, BATCH,
                capture=True, log=print,
                recorder=RefusedCapture(generator)), GraphedStep.UNTIMED)
    finally:
        generator.mark(False)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1
    assert "recording the CUDA graph failed" in err[0] and "--resume --no-cuda-graph" in err[0]


def test_a_step_that_reads_device_values_on_the_host_is_found_before_any_capture(generator):
    def reading(attack):
        def attack_that_reads(model, x, y):
            if x.sum().item() < 0:  # a host read, as a data-dependent branch makes one
                raise AssertionError
            return attack(model, x, y)
        return attack_that_reads

    recorder, lines = RefusedCapture(generator), []
    model, step, losses = train_tiny(lambda model, optimizer, attack: GraphedStep(
        alp_iteration(reading(attack), optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext, BATCH,
        capture=True, log=lines.append,
        recorder=recorder), GraphedStep.UNTIMED + 2)
    eager_model, _, eager_losses = train_tiny(partial(eager_step, attack_wrapper=reading), GraphedStep.UNTIMED + 2)
    assert recorder.recordings == 0  # never tried
    assert lines == ["CUDA graph: the step reads device values on the host (aten._local_scalar_dense x1), which a "
                     "CUDA graph cannot record; the eager step runs instead"]
    assert torch.equal(losses, eager_losses)
    assert_same_weights(model, eager_model)


class WeightCasts(TorchDispatchMode):
    """Counts the casts of `weights` (tensors) to bf16, seen at the dispatcher (under autocast, below it)."""

    def __init__(self, weights):
        super().__init__()
        self.pointers, self.count = {w.data_ptr() for w in weights}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16
                and args[0].data_ptr() in self.pointers):
            self.count += 1
        return func(*args, **kwargs)


def test_under_autocast_the_attack_casts_the_weights_once_per_iteration_with_the_same_figures(generator):
    """bf16 autocast casts each convolution's and linear layer's weights at every pass; the attack's passes
    (PGD-2 here, weights frozen) take copies cast once per iteration instead, rounded as autocast rounds."""
    autocast = mixed_precision("cpu", True)  # emulated where the CPU lacks bf16: slow, but the figures hold
    steps, batches = 2, 3
    casts = {}

    def counted(name, step_of):
        def make_step(model, optimizer, attack):
            step = step_of(model, optimizer, ATTACKS["pgd-linf"](8 / 255, steps=steps, stepsize=4 / 255))

            def counting_step(x, y):
                with WeightCasts(list(model.parameters())) as weight_casts:
                    result = step(x, y)
                casts.setdefault(name, []).append(weight_casts.count)
                return result
            return counting_step
        return make_step

    model, _, losses = train_tiny(counted("graphed", lambda model, optimizer, attack: GraphedStep(
        alp_iteration(attack, optimizer, 0.5, autocast), model, model, optimizer, autocast, BATCH,
        capture=False)), batches)
    eager_model, _, eager_losses = train_tiny(counted("eager", lambda model, optimizer, attack: (
        lambda x, y: train_step(model, model, attack, optimizer, x, y, 0.5, autocast))), batches)
    cast = 4  # the convolution's and the linear layer's weight and bias
    assert casts == {"eager": [(steps + 2) * cast] * batches, "graphed": [2 * cast] * batches}  # 2: training
    assert torch.equal(losses, eager_losses)
    assert_same_weights(model, eager_model)


def test_host_reads_counts_what_waits_for_the_device_and_nothing_else():
    x = torch.rand(6)
    with HostReads(DEVICE) as reads:
        x.sum().item()
        bool(x[0] > 0.5)
        x[x > 0.5]
        x.nonzero()
        torch.masked_select(x, x > 0.2)
        x.unique()
        torch.allclose(x, x)
        (x * 4).long().bincount()
    assert reads.counts == {"_local_scalar_dense": 2, "index": 1, "nonzero": 1, "masked_select": 1, "_unique2": 1,
                            "allclose": 1, "bincount": 1}
    with HostReads(DEVICE) as reads:  # what a training step does
        y = (x * 2).clamp(0, 1).sign()
        y[torch.arange(3)] = 0.5  # integer indices: no read
        torch.zeros(6, dtype=torch.bool)[torch.arange(2)] = torch.tensor(True)  # boolean values, not a mask
        torch.where(x > 0.5, x, 0.0).to(torch.float64).copy_(x)
    assert not reads.counts
    with HostReads(torch.device("meta")) as reads:  # only tensors on the device watched count
        x.sum().item()
    assert not reads.counts


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_training_step_reads_nothing_on_the_host(optimizer):
    """What ALP.py trains with (resnet20 for CIFAR's ResNets, the MNIST net with Adam): the graph is not
    refused for it."""
    torch.manual_seed(0)
    model_name, shape = ("resnet20", (3, 16, 16)) if optimizer == "sgd" else ("mnist", (1, 28, 28))
    model = MODELS[model_name](num_classes=10, mean=(0.5,) * shape[0], std=(0.25,) * shape[0])
    opt = make_optimizer(optimizer, model.parameters(), lr=LR, weight_decay=2e-4, fused=True)
    step = GraphedStep(alp_iteration(ATTACKS["pgd-linf"](0.1, steps=1, stepsize=0.1), opt, 0.5, nullcontext), model,
                       model, opt, nullcontext, 4,
                       capture=False)
    x, y = torch.rand(4, *shape), torch.randint(0, 10, (4,))
    for _ in range(2):  # the second step: the optimizer's state exists
        with HostReads(DEVICE) as reads:
            step(x, y)
        assert not reads.counts


def test_the_time_estimate_times_the_replays_not_the_warm_ups_and_the_capture(generator, monkeypatch):
    class FakeClock:
        now = 0.0

        def advance(self, seconds):
            self.now += seconds

    clock = FakeClock()
    monkeypatch.setattr(training.clock.time, "perf_counter", lambda: clock.now)
    recorder = ReplayingRecorder(generator, clock)
    model, optimizer, attack, x, y = tiny_setup()
    step = GraphedStep(alp_iteration(attack, optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext,
                       BATCH, capture=True, recorder=recorder)
    estimates = {untimed: BatchClock(DEVICE, untimed=untimed) for untimed in (GraphedStep.UNTIMED, 1)}
    figures = {}
    for batch in range(GraphedStep.UNTIMED + HYP["timed_batches"]):
        step(x, y)
        for untimed, batch_clock in estimates.items():
            figure = batch_clock.tick()
            if figure is not None:
                figures[untimed] = figure
    assert recorder.recordings == 1 and step.graph.replays == HYP["timed_batches"] + 1
    assert figures[GraphedStep.UNTIMED] == ReplayingRecorder.REPLAY_SECONDS
    assert figures[1] > 2 * ReplayingRecorder.REPLAY_SECONDS  # what leaving out the first batch alone gave


@pytest.mark.slow
def test_a_compiled_network_through_the_graphed_step_trains_like_the_eager_one(generator):
    """torch.compile (inductor, C++ on the CPU) in the warm-ups, the recording and the replays; the host-read
    search runs it uncompiled."""
    torch._dynamo.reset()
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    recorder = ReplayingRecorder(generator)
    model, step, losses = train_tiny(lambda model, optimizer, attack: GraphedStep(
        alp_iteration(attack, optimizer, 0.5, nullcontext), torch.compile(model), torch.compile(model), optimizer,
        nullcontext, BATCH, capture=True,
        recorder=recorder), GraphedStep.UNTIMED + 2)
    eager_model, _, eager_losses = train_tiny(eager_step, GraphedStep.UNTIMED + 2)
    assert recorder.recordings == 1 and step.capture_failure is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > compiled
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    assert_same_weights(model, eager_model, rtol=1e-4, atol=1e-5)


def test_a_compiled_network_that_fails_in_a_warm_up_runs_uncompiled_after_one_line(generator):
    class FailsToCompile(nn.Module):
        def __init__(self, network):
            super().__init__()
            self._orig_mod = network  # where torch.compile's wrapper keeps the network

        def forward(self, x):
            raise RuntimeError("InductorError: no working C++ compiler")

    lines = []
    model, step, losses = train_tiny(lambda model, optimizer, attack: GraphedStep(
        alp_iteration(attack, optimizer, 0.5, nullcontext), FailsToCompile(model), FailsToCompile(model), optimizer,
        nullcontext, BATCH, capture=True,
        log=lines.append, recorder=ReplayingRecorder(generator)), GraphedStep.UNTIMED + 2)
    eager_model, _, eager_losses = train_tiny(eager_step, GraphedStep.UNTIMED + 2)
    assert lines == ["CUDA graph: the compiled network failed in a warm-up (RuntimeError: InductorError: no "
                     "working C++ compiler); the network runs uncompiled"]
    assert torch.equal(losses, eager_losses)
    assert_same_weights(model, eager_model)


@pytest.mark.slow
def test_alp_run_whose_recording_fails_ends_with_the_eager_runs_figures(synthetic_mnist_root, tmp_path, generator,
                                                                       monkeypatch, cheap_validation):
    """ALP.py with the graph as on a GPU whose capture fails (the CPU's refusal of graphs switched off)."""
    args = ["mnist", "mnist", "--device=cpu", "-b=5", "--steps=1", "--epochs=1", "--subset=40", "-lr=0.0625",
            "--data-root", str(synthetic_mnist_root)]
    ALP.main(args + ["--out", str(tmp_path / "eager")])
    monkeypatch.setattr(training.loop, "cuda_graph_refusal", lambda *_: None)

    class GraphedStepRefusedOnTheCPU(GraphedStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, capture=True, recorder=RefusedCapture(generator), **kwargs)

    monkeypatch.setattr(training.loop, "GraphedStep", GraphedStepRefusedOnTheCPU)
    ALP.main(args + ["--out", str(tmp_path / "graph"), "--cuda-graph"])

    def logged(run):
        lines = next((tmp_path / run).glob("*/log.txt")).read_text().splitlines()
        return lines, [line.rsplit(" | ", 1)[0] for line in lines if line.startswith("epoch ")]  # less the seconds

    graph_lines, graph_epochs = logged("graph")
    assert sum("recording it failed (RuntimeError" in line for line in graph_lines) == 1
    eager_epochs = logged("eager")[1]
    assert graph_epochs == eager_epochs and len(eager_epochs) == 1
