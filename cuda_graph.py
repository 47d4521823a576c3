"""A training iteration replayed as one CUDA graph (ALP.py, CLP.py and LSQ.py on CUDA; bench.py).

An eager ALP iteration launches about one kernel per op, each launch waiting on Python: counted at the
dispatcher, resnet32's forward pass is about 145 ops and its input-gradient pass about 120 (float32; bf16
autocast adds a cast of every convolution and linear weight per pass), (2 x PGD steps + 3) passes in all,
some 3,000 to 3,500 kernels per PGD-10 iteration; on a fast GPU the GPU mostly waits for them. Recorded once as a
CUDA graph, the whole iteration (the PGD pair, both forward passes, the loss, the backward pass and the
optimiser step) is one launch. A network passed in compiled (torch.compile, whose inductor fuses the
element-wise work between convolutions into fewer kernels) is compiled during the warm-ups and recorded
compiled. `GraphedStep` records any script's iteration (training/loop.py) and gives the same figures.
"""
import sys
import warnings
from collections import Counter
from contextlib import contextmanager

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils._python_dispatch import TorchDispatchMode

from interrupts import Interrupted
from utils import fail, short_reason


def cuda_graph_refusal(device, world_size, compiled=False):
    """Why the graph-replayed step cannot run here, or None if it can. A compiled network (`compiled`) is
    no reason: it is compiled during the warm-ups and recorded compiled."""
    if torch.device(device).type != "cuda":
        return "CUDA graphs need a CUDA device"
    if world_size > 1:
        return "DistributedDataParallel inside a CUDA graph is unproven here"
    return None


class GraphedStep:
    """`iteration(train_model, attack_model, x, y) -> (loss, logits)` (a training script's, training/loop.py)
    for batches of `batch_size` images, recorded once as a CUDA graph and replayed: one launch per iteration
    instead of one per kernel. Called as step(x, y) -> (loss, logits), like the eager step. `optimizer` and
    `autocast` are those the iteration steps and computes with.

    A graph replays fixed kernels on fixed memory, hence:
    - each batch is copied into static input buffers; a batch of another size (the epoch's last) runs the
      eager iteration, so every image still counts;
    - the optimizer must be fused (optimization.OPTIMIZERS[name](..., fused=True)): its one kernel reads the learning
      rate from a device tensor that the graph holds. The param groups keep plain floats, which the
      scheduler sets and checkpoints save; a changed float is copied into the tensor before the next replay;
    - autocast must not cache weight casts (`mixed_precision` does not); the attack's passes, whose weights
      are frozen, take copies cast once per iteration instead (WeightsCastOnce);
    - the first WARMUP full batches run eagerly on a side stream (lazy initialisation, cudnn benchmarks,
      momentum buffers, compilation of a compiled network) and the next one is captured. The PGD random
      start draws from the default CUDA generator, whose offset each replay advances as the eager step would.
    BatchNorm (momentum set, not None) updates its running statistics inside the graph, as in eager mode.
    UNTIMED full batches (the warm-ups and the capture) pay one-off costs: a time estimate starts after them.

    A capture is never started where it would fail for a reason that can be seen beforehand: the first
    warm-up runs under `HostReads`, and a step that reads device values on the host (.item(), a boolean
    mask, a copy to the CPU: each waits for the GPU, and a capture refuses it) takes the eager step from
    then on, with one line to `log`. A capture can still fail (an op or a driver that refuses capture in a
    way no op shows): then `log` gets one line naming the cause and every later batch takes the eager step.
    Capturing runs no kernel, so the weights, optimizer state and BatchNorm statistics are those the
    warm-ups left and the failed batch is trained eagerly. A refused capture leaves the device's default
    random generator marked as capturing (PyTorch unmarks it only when a capture ends cleanly), after which
    every random draw on the device raises; GraphedStep puts back a copy of the generator's state taken
    before the capture, unmarked, so the eager step draws the numbers the capture would have drawn. Should
    random draws still fail after that, the run stops in one line that names --no-cuda-graph (the epochs
    saved so far are kept); so it does when the capture's private memory pool could not be ended
    (CUDAGraphRecorder). After the graph's first replay one host read checks that a weight changed: a graph
    that recorded nothing (captured on another device's stream, say) stops the run in that same line instead
    of replaying nothing for the rest of it.

    A compiled network whose compilation fails in a warm-up is replaced by the network itself, with one line
    to `log`, and the warm-up runs again uncompiled.

    capture=False (the default off CUDA) runs the same plumbing without a graph: every full batch is
    the iteration on the static buffers with the tensor learning rate. The CPU tests compare that with the
    plain eager step; the graph itself is tested in tests/test_cuda.py. `recorder` replaces the CUDA graph
    recorder (a CUDAGraphRecorder's generator and two methods) where capture is on: the CPU tests make
    recording fail, with the generator left as a refused CUDA capture leaves it."""

    WARMUP = 3
    UNTIMED = WARMUP + 1  # full batches before the step runs as it will: the warm-ups and the capture

    def __init__(self, iteration, train_model, attack_model, optimizer, autocast, batch_size, capture=None, log=None,
                 recorder=None):
        if isinstance(train_model, DistributedDataParallel):
            raise ValueError("GraphedStep does not run under DistributedDataParallel (unproven here)")
        if not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("GraphedStep needs a fused optimizer: optimization.OPTIMIZERS[name](..., fused=True)")
        if any(isinstance(m, _BatchNorm) and m.momentum is None for m in train_model.modules()):
            raise ValueError("BatchNorm with momentum=None reads its batch count on the host: not capturable")
        self.device = next(attack_model.parameters()).device
        self.capture = self.device.type == "cuda" if capture is None else capture
        self.iteration, self.optimizer = iteration, optimizer
        self.cast_dtype = _autocast_dtype(autocast, self.device.type)
        self._use_networks(train_model, attack_model)
        self.batch_size = batch_size
        self.static_x = self.static_y = None  # allocated like the first full batch: same strides and dtype
        # float32: the fused CUDA kernels read the learning rate through a float pointer
        self.learning_rates = [float(group["lr"]) for group in optimizer.param_groups]  # the floats copied in
        self.lr_tensors = [torch.tensor(lr, dtype=torch.float32, device=self.device) for lr in self.learning_rates]
        self.warmups_done, self.graph, self.outputs = 0, None, None
        self.recorder = (recorder or CUDAGraphRecorder(self.device)) if self.capture else None
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.capture_failure = None  # why the graph is not used (found before capturing, or the failed capture)
        self.compile_failure = None  # why a compiled network was replaced by the network itself

    def __call__(self, x, y):
        if len(y) != self.batch_size or self.capture_failure is not None:
            return self._eager(x, y)
        self._copy_in(x, y)
        if self.graph is not None:
            self.graph.replay()
        elif not self.capture:
            return self._iterate_on_static_batch()
        elif self.warmups_done < self.WARMUP:
            self.warmups_done += 1
            return self._warm_up(look_for_host_reads=self.warmups_done == 1)
        elif not self._record():
            return self._eager(x, y)
        loss, logits_adv = self.outputs
        return loss.clone(), logits_adv.clone()  # the static outputs change at the next replay

    def _use_networks(self, train_model, attack_model):
        self.models = train_model, attack_model
        # Under autocast the attack's passes (2 x steps, weights frozen) would each cast every weight anew.
        self.attack_network = (attack_model if self.cast_dtype is None
                               else WeightsCastOnce(attack_model, self.cast_dtype))

    def _train_step(self, x, y):
        if self.attack_network is not self.models[1]:
            self.attack_network.refresh()
        with _stepping_uncaptured_by_design():
            return self.iteration(self.models[0], self.attack_network, x, y)

    def _eager(self, x, y):
        return self._train_step(x, y)

    def _copy_in(self, x, y):
        if self.static_x is None:
            self.static_x, self.static_y = torch.empty_like(x), torch.empty_like(y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        for i, group in enumerate(self.optimizer.param_groups):
            if group["lr"] != self.learning_rates[i]:
                self.lr_tensors[i].fill_(group["lr"])
                self.learning_rates[i] = group["lr"]

    @contextmanager
    def _tensor_learning_rates(self):
        """The param groups hold the device tensors while an iteration is recorded (or stands in for one),
        their floats again afterwards."""
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        for group, tensor in zip(groups, self.lr_tensors):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value

    def _iterate_on_static_batch(self):
        with self._tensor_learning_rates():
            return self._train_step(self.static_x, self.static_y)

    def _warm_up(self, look_for_host_reads):
        """One eager iteration on the static batch. With look_for_host_reads, under HostReads (a compiled
        network runs uncompiled there: every op passes the dispatcher): a step that reads device values on
        the host is never captured. Retried uncompiled after a compiled network fails, from the same random
        numbers."""
        random_states = _random_states(self.device)
        try:
            if not look_for_host_reads:
                return self.recorder.warm_up(self._iterate_on_static_batch)
            with HostReads(self.device) as reads:
                result = self.recorder.warm_up(self._iterate_on_static_batch)
        except Interrupted:
            raise
        except Exception as error:
            if not self._uncompile(error):
                raise
            _set_random_states(self.device, random_states)
            return self._warm_up(look_for_host_reads)
        if reads.counts:
            self.capture_failure = f"the step reads device values on the host ({reads.summary()})"
            self.log(f"CUDA graph: {self.capture_failure}, which a CUDA graph cannot record; the eager step "
                     f"runs instead")
        return result

    def _uncompile(self, error):
        """After `error` in a warm-up: the networks themselves in place of compiled ones, with one line to
        `log`; False if none was compiled (the error is the step's own)."""
        originals = tuple(getattr(model, "_orig_mod", model) for model in self.models)
        if originals == self.models:
            return False
        self.compile_failure = short_reason(error)
        self.log(f"CUDA graph: the compiled network failed in a warm-up ({self.compile_failure}); the network "
                 f"runs uncompiled")
        self._use_networks(*originals)
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def _record(self):
        """Capture one iteration on the static batch and replay it (capturing runs no kernel). False, with
        the cause logged and the device's random generator usable again, if recording failed."""
        generator, state_before = self.recorder.generator, None
        try:
            state_before = generator.clone_state()  # a copy that the capture does not mark as capturing
            graph, outputs = self.recorder.record(self._iterate_on_static_batch)
        except BaseException as error:  # whatever refused capture: the eager step never needed it
            if state_before is not None:  # a Ctrl-C in the capture too: the process may go on (a notebook)
                generator.graphsafe_set_state(state_before)
            if isinstance(error, Interrupted) or not isinstance(error, Exception):
                raise
            self.capture_failure = short_reason(_first_cause(error))
            # What the abandoned capture allocated (gradients, outputs) is dropped with it: the eager step
            # starts from no gradients, as every eager step does.
            self.optimizer.zero_grad(set_to_none=True)
            if isinstance(error, CapturePoolLeftOpen):
                _stop(f"recording the CUDA graph failed ({self.capture_failure}) and {error}")
            if not _random_draws_work(self.device):
                _stop(f"recording the CUDA graph failed ({self.capture_failure}) and left the random number "
                      f"generator of {self.device} unusable")
            self.log(f"CUDA graph: recording it failed ({self.capture_failure}); the eager step runs instead")
            return False
        self.graph, self.outputs = graph, outputs
        weights = self._trained_tensors()
        before = _concatenated(weights)
        graph.replay()
        if any(lr > 0 for lr in self.learning_rates) and torch.equal(before, _concatenated(weights)):
            _stop(f"the CUDA graph's first replay changed no weight on {self.device}: it recorded nothing")
        return True

    def _trained_tensors(self):
        """What an iteration with a positive learning rate changes: the parameters the optimizer steps and
        the network's floating-point buffers (BatchNorm's statistics)."""
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        return parameters + [b for b in self.models[0].buffers() if b.is_floating_point()]


class WeightsCastOnce(torch.nn.Module):
    """A network for the attack's passes, whose convolutions and linear layers compute with copies of their
    weights and biases cast to `dtype` (autocast's) by refresh(), once per iteration; autocast leaves
    tensors already in its dtype alone, so the attack's passes cast none of them anew. The casts round as
    autocast's do: the figures are those of the network under autocast. Its parameters are the network's
    (attacks.common.attacking freezes them)."""

    CAST = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)  # what autocast runs in bf16

    def __init__(self, network, dtype):
        super().__init__()
        self.network = network
        self.originals = {f"{owner}.{name}" if owner else name: tensor
                          for owner, module in network.named_modules() if isinstance(module, self.CAST)
                          for name, tensor in module.named_parameters(recurse=False)}
        self.casts = {name: torch.empty_like(tensor, dtype=dtype) for name, tensor in self.originals.items()}

    def refresh(self):
        with torch.no_grad():
            torch._foreach_copy_(list(self.casts.values()), list(self.originals.values()))

    def forward(self, x):
        return torch.func.functional_call(self.network, self.casts, (x,))


def _autocast_dtype(autocast, device_type):
    """The dtype `autocast()` casts to on `device_type`, or None where it casts nothing."""
    with autocast():
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    return None


def _stop(reason):
    """End the run in one line: what the graph left cannot be trained on, and the eager step can."""
    fail(f"{reason}; stopping (the epochs saved so far are kept): continue with --resume --no-cuda-graph",
         status=1)


def _concatenated(tensors):
    """One flat float32 copy of `tensors` (compared after the graph's first replay: one host read)."""
    with torch.no_grad():
        return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def _first_cause(error):
    """The exception that started a chain: a capture that fails inside ends in a second error from the
    capture's end, raised while the first is handled."""
    while error.__context__ is not None:
        error = error.__context__
    return error


def _random_states(device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_random_states(device, states):
    torch.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


def _random_draws_work(device):
    """Whether a random draw on `device` succeeds; the generators' states are left as they were."""
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.empty(1, device=device).uniform_()
    except RuntimeError:
        return False
    return True


class HostReads(TorchDispatchMode):
    """Counts, by op, what the code run under it does that reads the values of a tensor on `device` on the
    host, seen at the dispatcher: on CUDA each waits for the GPU, and a CUDA graph capture refuses it.
    Reading a value into Python (.item(), bool(), float(), equal, allclose), the ops whose output size
    depends on the values (nonzero, masked_select, unique, bincount, boolean-mask indexing and assignment:
    the host must see the values to allocate the result), and copies between the device and the CPU. The
    tests count the host syncs of the attacks with it too (on the CPU, where they cost nothing)."""

    VALUE_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
                   torch.ops.aten.equal.default, torch.ops.aten.allclose.default}
    DATA_DEPENDENT_SHAPES = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
                             torch.ops.aten._unique.default, torch.ops.aten._unique2.default,
                             torch.ops.aten.unique_consecutive.default, torch.ops.aten.unique_dim.default,
                             torch.ops.aten.bincount.default, torch.ops.aten.repeat_interleave.Tensor}
    INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
                torch.ops.aten._index_put_impl_.default}
    COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self._reads_on_host(func, args, result):
            self.counts[str(func.overloadpacket.__name__)] += 1
        return result

    def _reads_on_host(self, func, args, result):
        tensors = [a for a in torch.utils._pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]
        on_device = any(t.device == self.device for t in tensors)
        if func in self.VALUE_READS or func in self.DATA_DEPENDENT_SHAPES:
            return on_device
        if func in self.INDEXING:  # a boolean mask among the indices (not the values written): a nonzero inside
            return on_device and any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
                                     for index in args[1])
        if func in self.COPIES:
            ends = tensors[:2] if func is torch.ops.aten.copy_.default else [tensors[0], result]
            return len({t.device.type for t in ends}) > 1 and any(t.device == self.device for t in ends)
        return False

    def summary(self):
        return ", ".join(f"aten.{name} x{count}" for name, count in self.counts.most_common())


class CapturePoolLeftOpen(RuntimeError):
    """A refused capture whose private memory pool could not be ended: the caching allocator would go on
    treating the device as capturing."""


class CUDAGraphRecorder:
    """How GraphedStep warms up and records on CUDA, as PyTorch's CUDA graph notes do it: the warm-up
    iterations run on a side stream, then one iteration is captured into a CUDAGraph. `generator` is the
    random generator a capture on the device registers (its default one).

    Everything runs with the run's device current (`torch.cuda.device`) and the capture on the side stream,
    made on that device: torch.cuda.graph, given no stream, captures on a stream of the *current* device,
    and capture_begin takes its device and memory pool from the current device. Captured on another
    device's stream, the step's kernels would run eagerly and the graph would record nothing.

    The capture allocates from a pool of its own (graph_pool_handle). CUDAGraph.capture_end ends that pool
    only once the capture ended cleanly (cudaStreamEndCapture comes first and raises for a refused capture),
    and a graph whose capture did not end never releases it: the caching allocator would go on routing and
    deferring as if a capture were under way. A refused capture's pool is ended and released here, as
    torch.cuda.use_mem_pool ends its pools; where that fails, record raises CapturePoolLeftOpen."""

    def __init__(self, device):
        torch.cuda.init()  # fills torch.cuda.default_generators
        self.device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        with torch.cuda.device(self.device):
            self.side_stream = torch.cuda.Stream(self.device)
        self.generator = torch.cuda.default_generators[self.device.index]

    def warm_up(self, fn):
        """fn() on the side stream, ordered after and before the current stream's work."""
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            self.side_stream.wait_stream(current)
            with torch.cuda.stream(self.side_stream):
                result = fn()
            current.wait_stream(self.side_stream)
        return result

    def record(self, fn):
        """(graph, fn()'s outputs as the graph will write them). A failure inside the capture ends the
        capture (torch.cuda.graph's exit) and its memory pool before it propagates."""
        graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
        with torch.cuda.device(self.device):
            eager_stream = torch.cuda.current_stream(self.device)
            try:
                with torch.cuda.graph(graph, pool=pool, stream=self.side_stream):
                    outputs = fn()
            except BaseException as error:
                torch.cuda.set_stream(eager_stream)  # ending a broken capture leaves its capture stream current
                left_open = self._end_refused_pool(graph, pool)
                if left_open:
                    raise CapturePoolLeftOpen(f"its memory pool could not be ended ({left_open})") from error
                raise
        return graph, outputs

    def _end_refused_pool(self, graph, pool):
        """End and release the pool of a capture that did not end; None when done (or nothing was left),
        else why not."""
        try:
            graph.pool()  # answers only after a capture that ended: then the graph releases its pool itself
            return None
        except RuntimeError:
            pass
        index = self.device.index
        try:
            torch.cuda.memory._cuda_endAllocateToPool(index, pool)
        except RuntimeError:  # refused before the pool began (capture_begin's own checks): nothing to end
            return None
        except Exception as error:
            return short_reason(error)
        try:
            torch.cuda.memory._cuda_releasePool(index, pool)
            torch.cuda.empty_cache()
        except Exception as error:
            return short_reason(error)
        return None


@contextmanager
def _stepping_uncaptured_by_design():
    """A capturable optimizer (Adam) warns when it steps outside a capture; GraphedStep's warm-ups and last
    batches do so by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
        yield
