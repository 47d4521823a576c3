"""The ALP training step and what runs around it: one epoch, validation, and the distributed plumbing.

ALP.py (the script) and bench.py (the timings) both train through `train_step`, or through
`cuda_graph.GraphedStep`, which replays the same iteration as one CUDA graph, so what bench.py times is what
ALP.py runs.
"""
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
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
