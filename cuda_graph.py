"""The ALP training iteration replayed as one CUDA graph (ALP.py --cuda-graph, bench.py).

An eager ALP iteration launches about 40 kernels per forward or backward pass, (2 x PGD steps + 3) passes in
all, each launch waiting on Python; on a fast GPU the GPU mostly waits. Recorded once as a CUDA graph, the
whole iteration (the PGD pair, both forward passes, the loss, the backward pass and the optimiser step) is
one launch. `GraphedStep` is called like `training.train_step` and gives the same figures.
"""
import sys
import warnings
from contextlib import contextmanager, suppress

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from training import train_step
from utils import short_reason


def cuda_graph_refusal(device, world_size, compiled):
    """Why the graph-replayed step cannot run here, or None if it can."""
    if torch.device(device).type != "cuda":
        return "CUDA graphs need a CUDA device"
    if world_size > 1:
        return "DistributedDataParallel inside a CUDA graph is unproven here"
    if compiled:
        return "--compile and CUDA graphs are not combined here"
    return None


class GraphedStep:
    """`train_step` for batches of `batch_size` images, recorded once as a CUDA graph and replayed: one
    launch per iteration instead of ~40 kernels per pass, 2 x steps + 3 passes, each waiting on Python.
    Called as step(x, y) -> (loss, adversarial logits), like the eager step.

    A graph replays fixed kernels on fixed memory, hence:
    - each batch is copied into static input buffers; a batch of another size (the epoch's last) runs the
      eager `train_step`, so every image still counts;
    - the optimizer must be fused (optimization.OPTIMIZERS[name](..., fused=True)): its one kernel reads the learning
      rate from a device tensor that the graph holds. The param groups keep plain floats, which the
      scheduler sets and checkpoints save; a changed float is copied into the tensor before the next replay;
    - autocast must not cache weight casts (`mixed_precision` does not);
    - the first WARMUP full batches run eagerly on a side stream (lazy initialisation, cudnn benchmarks,
      momentum buffers) and the next one is captured. The PGD random start draws from the default CUDA
      generator, whose offset each replay advances as the eager step would.
    BatchNorm (momentum set, not None) updates its running statistics inside the graph, as in eager mode.

    Recording can fail where eager code runs (an op that refuses capture, a driver or GPU without support):
    then `log` gets one line naming the cause and every later batch takes the eager step. Capturing runs no
    kernel, so the weights, optimizer state and BatchNorm statistics are those the warm-ups left; the failed
    batch itself is trained eagerly, so the run goes on as if it had never asked for a graph.

    capture=False (the default off CUDA) runs the same plumbing without a graph: every full batch is
    `train_step` on the static buffers with the tensor learning rate. The CPU tests compare that with the
    plain eager step; the graph itself is tested in tests/test_cuda.py. `recorder` replaces the CUDA graph
    recorder (a CUDAGraphRecorder's two methods) where capture is on: the CPU tests make recording fail."""

    WARMUP = 3

    def __init__(self, train_model, attack_model, attack, optimizer, leverage, autocast, batch_size, capture=None,
                 log=None, recorder=None):
        if isinstance(train_model, DistributedDataParallel):
            raise ValueError("GraphedStep does not run under DistributedDataParallel (unproven here)")
        if not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("GraphedStep needs a fused optimizer: optimization.OPTIMIZERS[name](..., fused=True)")
        if any(isinstance(m, _BatchNorm) and m.momentum is None for m in train_model.modules()):
            raise ValueError("BatchNorm with momentum=None reads its batch count on the host: not capturable")
        self.device = next(attack_model.parameters()).device
        self.capture = self.device.type == "cuda" if capture is None else capture
        self.models, self.attack, self.optimizer = (train_model, attack_model), attack, optimizer
        self.leverage, self.autocast, self.batch_size = leverage, autocast, batch_size
        self.static_x = self.static_y = None  # allocated like the first full batch: same strides and dtype
        # float32: the fused CUDA kernels read the learning rate through a float pointer
        self.learning_rates = [float(group["lr"]) for group in optimizer.param_groups]  # the floats copied in
        self.lr_tensors = [torch.tensor(lr, dtype=torch.float32, device=self.device) for lr in self.learning_rates]
        self.warmups_done, self.graph, self.outputs = 0, None, None
        self.recorder = (recorder or CUDAGraphRecorder(self.device)) if self.capture else None
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.capture_failure = None  # why recording failed, once it has

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
            return self.recorder.warm_up(self._iterate_on_static_batch)
        elif not self._record():
            return self._eager(x, y)
        loss, logits_adv = self.outputs
        return loss.clone(), logits_adv.clone()  # the static outputs change at the next replay

    def _eager(self, x, y):
        train_model, attack_model = self.models
        with _stepping_uncaptured_by_design():
            return train_step(train_model, attack_model, self.attack, self.optimizer, x, y, self.leverage,
                              self.autocast)

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
        train_model, attack_model = self.models
        with self._tensor_learning_rates(), _stepping_uncaptured_by_design():
            return train_step(train_model, attack_model, self.attack, self.optimizer, self.static_x, self.static_y,
                              self.leverage, self.autocast)

    def _record(self):
        """Capture one iteration on the static batch and replay it (capturing runs no kernel). False, with
        the cause logged, if recording failed."""
        try:
            graph, outputs = self.recorder.record(self._iterate_on_static_batch)
        except Exception as error:  # whatever refused capture: the eager step never needed it
            self.capture_failure = short_reason(error)
            # What the abandoned capture allocated (gradients, outputs) is dropped with it: the eager step
            # starts from no gradients, as every eager step does.
            self.optimizer.zero_grad(set_to_none=True)
            self.log(f"--cuda-graph: recording the CUDA graph failed ({self.capture_failure}); the eager step "
                     f"runs instead")
            return False
        self.graph, self.outputs = graph, outputs
        graph.replay()
        return True


class CUDAGraphRecorder:
    """How GraphedStep warms up and records on CUDA, as PyTorch's CUDA graph notes do it: the warm-up
    iterations run on a side stream, then one iteration is captured into a CUDAGraph."""

    def __init__(self, device):
        self.device = device
        self.side_stream = torch.cuda.Stream(device)

    def warm_up(self, fn):
        """fn() on the side stream, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            result = fn()
        current.wait_stream(self.side_stream)
        return result

    def record(self, fn):
        """(graph, fn()'s outputs as the graph will write them). A failure inside the capture ends the
        capture (torch.cuda.graph's exit) before it propagates."""
        graph = torch.cuda.CUDAGraph()
        eager_stream = torch.cuda.current_stream(self.device)
        rng_state = torch.cuda.get_rng_state(self.device)
        try:
            with torch.cuda.graph(graph):
                outputs = fn()
        except Exception:
            # The eager step that takes over draws the random numbers the capture would have drawn. Should
            # the generator refuse (still marked as capturing), the capture's own error is the one to report.
            with suppress(RuntimeError):
                torch.cuda.set_rng_state(rng_state, self.device)
            raise
        finally:  # when ending a broken capture raises, torch.cuda.graph leaves its capture stream current
            torch.cuda.set_stream(eager_stream)
        return graph, outputs


@contextmanager
def _stepping_uncaptured_by_design():
    """A capturable optimizer (Adam) warns when it steps outside a capture; GraphedStep's warm-ups and last
    batches do so by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
        yield
