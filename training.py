"""The ALP training step and what runs around it: one epoch, validation, and the distributed plumbing.

ALP.py (the script) and bench.py (the timings) both train through `train_step`, or through `GraphedStep`,
which replays the same iteration as one CUDA graph, so what bench.py times is what ALP.py runs.
"""
import os
import warnings
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

# Attacks that may make the training pairs (names in attacks.ATTACKS).
TRAINING_ATTACKS = ("pgd-linf", "pgd-l2")

# The attack that measures robust accuracy after each epoch, by data-set family: the reference's choices.
VALIDATION_ATTACKS = {
    "cifar": dict(epsilon=8 / 255, steps=10, stepsize=2 / 255),   # PGD-10
    "mnist": dict(epsilon=0.3, steps=100, stepsize=0.01),         # PGD-100
}


def validation_batch_size(device):
    """Images per validation batch: no weight gradients, so wider than training. On a GPU, batches of 500
    left an H100 mostly idle (issue 8); 2000 is a guess not yet measured, chosen to keep resnet18's PGD
    within a few GB."""
    return 2000 if torch.device(device).type == "cuda" else 500


def mixed_precision(device_type, enabled):
    """The autocast factory of the training and validation passes: bf16 where enabled, else nothing. Casts
    of the weights are not cached: a captured CUDA graph cannot hold that cache (PyTorch's CUDA graph notes),
    and it would save one cast of the weights per forward pass only."""
    if not enabled:
        return nullcontext
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)


def alp_loss(model, x, x_adv, y, leverage):
    """The ALP objective and the adversarial logits. Two forward passes, not one on the concatenated batch:
    BatchNorm normalises the clean and the adversarial half each with its own statistics, as the reference
    does. Logits go to float32 before the losses, so bf16 autocast never reaches them."""
    logits_nat = model(x).float()
    logits_adv = model(x_adv).float()
    loss = (F.cross_entropy(logits_nat, y) + F.cross_entropy(logits_adv, y)
            + leverage * F.mse_loss(logits_adv, logits_nat))  # MSE averaged over all logits
    return loss, logits_adv


def train_step(train_model, attack_model, attack, optimizer, x, y, leverage, autocast=nullcontext):
    """One ALP iteration: make the PGD pair, compute the loss, step. `attack_model` is the network without
    the DistributedDataParallel wrapper that `train_model` may carry: attacks need no gradient
    synchronisation."""
    with autocast():
        x_adv = attack(attack_model, x, y)  # eval mode, gradient w.r.t. the input only
    train_model.train()
    with autocast():
        loss, logits_adv = alp_loss(train_model, x, x_adv, y, leverage)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits_adv.detach()


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
    launch per iteration instead of ~40 kernels per pass, 2 x steps + 3 passes, each waiting on Python
    (issue 8). Called as step(x, y) -> (loss, adversarial logits), like the eager step.

    A graph replays fixed kernels on fixed memory, hence:
    - each batch is copied into static input buffers; a batch of another size (the epoch's last) runs the
      eager `train_step`, so every image still counts;
    - the optimizer must be fused (utils.OPTIMIZERS(..., fused=True)): its one kernel reads the learning
      rate from a device tensor that the graph holds. The param groups keep plain floats, which the
      scheduler sets and checkpoints save; a changed float is copied into the tensor before the next replay;
    - autocast must not cache weight casts (`mixed_precision` does not);
    - the first WARMUP full batches run eagerly on a side stream (lazy initialisation, cudnn benchmarks,
      momentum buffers) and the next one is captured. The PGD random start draws from the default CUDA
      generator, whose offset each replay advances as the eager step would.
    BatchNorm (momentum set, not None) updates its running statistics inside the graph, as in eager mode.

    capture=False (the default off CUDA) runs the same plumbing without a graph: every full batch is
    `train_step` on the static buffers with the tensor learning rate. The CPU tests compare that with the
    plain eager step; the graph itself is tested in tests/test_cuda.py."""

    WARMUP = 3

    def __init__(self, train_model, attack_model, attack, optimizer, leverage, autocast, batch_size, capture=None):
        if isinstance(train_model, DistributedDataParallel):
            raise ValueError("GraphedStep does not run under DistributedDataParallel (unproven here)")
        if not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("GraphedStep needs a fused optimizer: utils.OPTIMIZERS[name](..., fused=True)")
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
        self.side_stream = torch.cuda.Stream(self.device) if self.capture else None

    def __call__(self, x, y):
        if len(y) != self.batch_size:
            return self._eager(x, y)
        self._copy_in(x, y)
        if self.graph is not None:
            self.graph.replay()
        elif not self.capture:
            return self._iterate_on_static_batch()
        elif self.warmups_done < self.WARMUP:
            self.warmups_done += 1
            return self._on_side_stream(self._iterate_on_static_batch)
        else:
            self._record()
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

    def _on_side_stream(self, fn):
        """fn() on the side stream, ordered after and before the current stream's work (PyTorch's recipe: the
        warm-up iterations before a capture run on a side stream)."""
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            result = fn()
        current.wait_stream(self.side_stream)
        return result

    def _record(self):
        """Capture one iteration on the static batch and replay it: capturing runs no kernel."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._iterate_on_static_batch()
        self.graph.replay()


@contextmanager
def _stepping_uncaptured_by_design():
    """A capturable optimizer (Adam) warns when it steps outside a capture; GraphedStep's warm-ups and last
    batches do so by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
        yield


def train_epoch(step, loader, epoch, progress=False):
    """Runs step(x, y) -> (loss, adversarial logits) over one epoch of `loader`. Returns device tensors
    (loss sum, correct on x_adv, count) and the first non-finite batch (-1 if none). Nothing here waits for
    the GPU: the figures are read once, after the epoch."""
    device = loader.labels.device
    totals = torch.zeros(3, device=device)
    first_bad_batch = torch.tensor(-1, device=device)
    for batch, (x, y) in enumerate(tqdm(loader.epoch(epoch), total=len(loader), disable=not progress,
                                        desc=f"epoch {epoch + 1}", leave=False)):
        loss, logits_adv = step(x, y)
        totals[0] += loss * len(y)
        totals[1] += (logits_adv.argmax(1) == y).sum()
        totals[2] += len(y)
        first_bad_batch = torch.where((first_bad_batch < 0) & ~torch.isfinite(loss), batch, first_bad_batch)
    return totals, first_bad_batch


@torch.no_grad()
def predictions_correct(model, x, y):
    return model(x).argmax(1) == y


def validate(model, loader, attack, autocast=nullcontext):
    """(clean accuracy, robust accuracy) on a validation loader."""
    was_training = model.training
    model.eval()
    clean = robust = 0
    for x, y in loader.epoch():
        with autocast():
            x_adv = attack(model, x, y)
            clean += predictions_correct(model, x, y).sum()
            robust += predictions_correct(model, x_adv, y).sum()
    model.train(was_training)
    n = len(loader.labels)
    return clean.item() / n, robust.item() / n


# --- distributed plumbing ----------------------------------------------------------------------------------

def setup_process(device):
    """(rank, world size, device). Under torchrun one process per device, gloo on CPU, nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(device)
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, device


def all_ranks(tensor, op=dist.ReduceOp.SUM):
    """The tensor reduced over processes (unchanged in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier():
    if dist.is_initialized():
        dist.barrier()


def gather_from_all_ranks(value):
    """[value of rank 0, value of rank 1, ...] (a one-element list in a single process)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
