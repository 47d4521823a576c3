"""CPU (on every machine): what the CUDA-graph step does around the graph, with the graph faked. A recorder
that fails as a refused capture does, leaving the random generator as CUDA leaves it; the CUDA recorder
itself through torch.cuda.graph over a fake of the CUDA calls beneath it (devices, streams, the graph, the
caching allocator's pools); a step that reads device values on the host, found before any capture; a
compiled network through the step; the time estimate after the warm-ups and the capture. The graph itself
is tested on CUDA in tests/test_cuda.py."""
from collections import Counter
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
from cuda_graph import CUDAGraphRecorder, GraphedStep, HostReads
from data import DeviceLoader
from models import MODELS
from conftest import alp_iteration, make_optimizer, run_epoch
from training import mixed_precision, train_step
from training.clock import BatchClock
from training.hyp import HYP
from training.processes import setup_process
from training.speed import compiled_network
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
        for static, new in zip(self.outputs, self.fn()):
            static.resize_(new.shape).copy_(new)
        if self.clock:
            self.clock.advance(ReplayingRecorder.REPLAY_SECONDS)


class ReplayingRecorder:
    """A capture that succeeds, on the CPU: recording runs nothing (a capture runs no kernel) and returns the
    outputs the graph will write, each replay runs the iteration into them. With a fake `clock`, a warm-up or
    the recording takes 10 s (compilation, cudnn's benchmarks), a replay 1 s."""
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
        outputs = torch.empty(0), torch.empty(0)  # filled by each replay
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


class FakeStream:
    def __init__(self, device=None, default=False):
        self.device = torch.device("cuda", FakeCUDA.now.device if device is None else torch.device(device).index)
        self.default = default

    def wait_stream(self, other):
        pass


class FakeCUDAGraph:
    """torch.cuda.CUDAGraph as aten/src/ATen/cuda/CUDAGraph.cpp behaves, run by the real torch.cuda.graph:
    capture_begin captures on the current stream, takes the current device and begins allocating to the pool
    there; capture_end first ends the stream's capture, which raises for a refused capture before the pool is
    ended; pool() answers only after a clean end, and only then does the graph release the pool."""

    def __init__(self):
        self.ended, self.replays = False, 0

    def capture_begin(self, pool=None, capture_error_mode="global", check_input_liveness=False):
        cuda = FakeCUDA.now
        self.stream, self.device, self.mempool = cuda.current_stream(), cuda.device, pool
        assert not self.stream.default, "CUDA graphs must be captured on a non-default stream"
        cuda.allocator.begin(self.device, self.mempool)
        cuda.capturing = self

    def capture_end(self):
        cuda = FakeCUDA.now
        assert cuda.current_stream() is self.stream, "Capture must end on the same stream it began on"
        cuda.capturing = None
        if cuda.refused:  # cudaStreamEndCapture: the capture was invalidated
            cuda.generators[self.device].capture_refused()
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        cuda.allocator.end(self.device, self.mempool)
        self.ended = True

    def pool(self):
        if not self.ended:
            raise RuntimeError("Called CUDAGraph::pool() without a preceding successful capture.")
        return self.mempool

    def replay(self):
        self.replays += 1

    def __del__(self):
        if self.ended and FakeCUDA.now is not None:
            FakeCUDA.now.allocator.release(self.device, self.mempool)


class FakeAllocator:
    """The caching allocator's graph pools: the captures under way and each pool's use count."""

    def __init__(self):
        self.underway, self.use_counts = [], Counter()

    def begin(self, device, pool):
        self.underway.append((device, pool))
        self.use_counts[device, pool] += 1

    def end(self, device, pool):
        if (device, pool) not in self.underway:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        self.underway.remove((device, pool))

    def release(self, device, pool):
        assert self.use_counts[device, pool] > 0, "INTERNAL ASSERT FAILED: releasePool of a released pool"
        self.use_counts[device, pool] -= 1


class CurrentDevice:
    """torch.cuda.device: the device current inside, the one before after."""

    def __init__(self, cuda, index):
        self.cuda, self.index = cuda, index

    def __enter__(self):
        self.before, self.cuda.device = self.cuda.device, self.index

    def __exit__(self, *exc):
        self.cuda.device = self.before


class CurrentStream:
    """torch.cuda.stream (StreamContext): the stream current on its device inside, with its device current;
    the streams and device before after. Left unexited, as a capture whose end raises leaves it, it puts
    nothing back."""

    def __init__(self, cuda, stream):
        self.cuda, self.stream = cuda, stream

    def __enter__(self):
        self.before, self.device = self.cuda.current_stream(self.stream.device), self.cuda.device
        self.cuda.set_stream(self.stream)

    def __exit__(self, *exc):
        self.cuda.set_stream(self.before)
        self.cuda.device = self.device


class FakeCUDA:
    """Two CUDA devices as torch.cuda shows them, on the CPU: the current device (cuda:0 until set), each
    device's current stream, default generators, graph pools. `refused` makes a capture end as CUDA ends an
    invalidated one; `seen` keeps (what, current device, current stream's device) for each call of note."""
    now = None

    def __init__(self, monkeypatch, generators):
        FakeCUDA.now = self
        self.device, self.capturing, self.refused, self.seen = 0, None, False, []
        self.streams = {i: FakeStream(i, default=True) for i in range(2)}
        self.generators, self.allocator, self.pools = generators, FakeAllocator(), 0
        cuda = torch.cuda
        for name, value in {"init": lambda: None, "current_device": lambda: self.device, "device": self.use_device,
                            "Stream": FakeStream, "current_stream": self.current_stream, "stream": self.use_stream,
                            "set_stream": self.set_stream, "default_generators": generators,
                            "CUDAGraph": FakeCUDAGraph, "graph_pool_handle": self.graph_pool_handle,
                            "synchronize": lambda device=None: self.note("synchronize"),
                            "empty_cache": lambda: self.note("empty_cache")}.items():
            monkeypatch.setattr(cuda, name, value)
        monkeypatch.setattr(torch._C, "_host_emptyCache", lambda: None, raising=False)
        monkeypatch.setattr(torch.cuda.graph, "default_capture_stream", None)
        monkeypatch.setattr(torch.cuda.memory, "_cuda_endAllocateToPool", self.allocator.end)
        monkeypatch.setattr(torch.cuda.memory, "_cuda_releasePool", self.allocator.release)

    def note(self, what):
        self.seen.append((what, self.device, self.current_stream().device.index))

    def current_stream(self, device=None):
        return self.streams[self.device if device is None else torch.device(device).index]

    def set_stream(self, stream):
        self.device = stream.device.index  # torch._C._cuda_setStream makes the stream's device current
        self.streams[self.device] = stream

    def use_device(self, device):
        return CurrentDevice(self, torch.device(device).index)

    def use_stream(self, stream):
        return CurrentStream(self, stream)

    def graph_pool_handle(self):
        self.pools += 1
        return (0, self.pools)


@pytest.fixture
def two_fake_gpus(monkeypatch):
    generators = [StandInGenerator(), StandInGenerator()]
    yield FakeCUDA(monkeypatch, generators)
    for stand_in in generators:
        stand_in.mark(False)
    FakeCUDA.now = None


def test_warm_ups_and_capture_run_on_the_runs_device_and_a_stream_made_there(two_fake_gpus):
    """torch.cuda.graph given no stream captures on a stream of the current device (cuda:0 here): the step's
    kernels on cuda:1 would run eagerly during the capture and the graph would record nothing."""
    cuda = two_fake_gpus
    recorder = CUDAGraphRecorder(torch.device("cuda:1"))
    recorder.warm_up(lambda: cuda.note("warm-up"))
    graph, _ = recorder.record(lambda: (cuda.note("captured"), None))
    assert (graph.device, graph.stream.device.index) == (1, 1)
    assert cuda.seen == [("warm-up", 1, 1), ("synchronize", 1, 1), ("empty_cache", 1, 1), ("captured", 1, 1)]
    assert cuda.device == 0 and cuda.current_stream(1).default  # put back as they were
    del graph
    assert not cuda.allocator.underway and not +cuda.allocator.use_counts


def graphed_on_fake_gpu(recorder, attack_wrapper=lambda attack: attack, lines=None):
    return lambda model, optimizer, attack: GraphedStep(
        alp_iteration(attack_wrapper(attack), optimizer, 0.5, nullcontext), model, model, optimizer, nullcontext,
        BATCH, capture=True, log=print if lines is None else lines.append, recorder=recorder)


def refused_in_capture(attack):
    def attack_that_syncs_in_capture(model, x, y):
        if FakeCUDA.now.capturing is not None:  # .item() while capturing: CUDA invalidates the capture
            FakeCUDA.now.refused = True
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return attack(model, x, y)
    return attack_that_syncs_in_capture


def test_a_refused_capture_ends_and_releases_its_memory_pool_and_trains_eagerly(two_fake_gpus):
    """CUDAGraph.capture_end raises before it ends the pool, and the graph of a capture that did not end
    never releases it: left so, the caching allocator treats the device as capturing from then on."""
    lines = []
    model, step, losses = train_tiny(graphed_on_fake_gpu(CUDAGraphRecorder(torch.device("cuda:1")),
                                                         refused_in_capture, lines), GraphedStep.UNTIMED + 2)
    eager_model, _, eager_losses = train_tiny(eager_step, GraphedStep.UNTIMED + 2)
    assert len(lines) == 1 and lines[0].startswith("CUDA graph: recording it failed (RuntimeError: CUDA error: "
                                                   "operation not permitted"), lines
    assert not two_fake_gpus.allocator.underway and not +two_fake_gpus.allocator.use_counts
    assert two_fake_gpus.generators[1].poison is None and two_fake_gpus.device == 0
    assert torch.equal(losses, eager_losses)
    assert_same_weights(model, eager_model)


def test_a_refused_capture_whose_pool_cannot_be_ended_stops_the_run_in_one_line(two_fake_gpus, monkeypatch,
                                                                                 capsys):
    def unavailable(device, pool):
        raise AttributeError("module 'torch._C' has no attribute '_cuda_endAllocateToPool'")

    monkeypatch.setattr(torch.cuda.memory, "_cuda_endAllocateToPool", unavailable)
    with pytest.raises(SystemExit) as stop:
        train_tiny(graphed_on_fake_gpu(CUDAGraphRecorder(torch.device("cuda:1")), refused_in_capture),
                   GraphedStep.UNTIMED)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1
    assert "its memory pool could not be ended" in err[0] and "--resume --no-cuda-graph" in err[0]


class CapturedOnAnotherDevice:
    """What a capture on another device's stream does: the step's kernels run eagerly while capturing, and
    the graph records none of them."""

    def __init__(self, generator):
        self.generator = generator

    def warm_up(self, fn):
        return fn()

    def record(self, fn):
        return FakeCUDAGraph(), fn()


def test_a_graph_whose_first_replay_changes_no_weight_stops_the_run_in_one_line(generator, capsys):
    with pytest.raises(SystemExit) as stop:
        train_tiny(graphed_on_fake_gpu(CapturedOnAnotherDevice(generator)), GraphedStep.UNTIMED + 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1
    assert "first replay changed no weight" in err[0] and "--resume --no-cuda-graph" in err[0]


def test_a_single_process_on_cuda_1_makes_cuda_1_current(monkeypatch):
    """What names no device (torch.cuda.graph's own capture stream, synchronize, empty_cache) runs on the
    current device; on CPU, torch.cuda.set_device recorded."""
    made_current = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert setup_process("cuda:1") == (0, 1, torch.device("cuda:1"))
    assert made_current == [torch.device("cuda:1")]
    assert setup_process("cpu") == (0, 1, torch.device("cpu")) and len(made_current) == 1


@pytest.mark.slow
def test_bf16_autocast_and_compile_through_the_warm_up_path_compile_each_pass_once_per_batch_size():
    """CPU, inductor: the attack's passes (WeightsCastOnce's bf16 weights) and the loss's pass compile once
    each at the first iteration and never again at the same batch size; another batch size compiles anew
    (static shapes, as a CUDA graph replays them), rather than turning them into dynamic-shape kernels."""
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]  # the counters outlive dynamo's reset
    model, optimizer, attack, x, y = tiny_setup()
    net = compiled_network(model)
    autocast = mixed_precision("cpu", True)
    step = GraphedStep(alp_iteration(attack, optimizer, 0.5, autocast), net, net, optimizer, autocast, BATCH,
                       capture=False)
    compiled = []
    for _ in range(GraphedStep.UNTIMED + 1):
        assert torch.isfinite(step(x, y)[0])
        compiled.append(graphs["unique_graphs"] - before)
    for size in (5, 3):  # the epoch's last batch, shorter: the eager step
        step(x[:size], y[:size])
        compiled.append(graphs["unique_graphs"] - before)
    first = compiled[0]
    assert 1 <= first <= 2 and compiled == [first] * (GraphedStep.UNTIMED + 1) + [2 * first, 3 * first]
