"""The ALP loss and training step, the defaults of the training flags by data set, the hyper-parameters that
no flag sets, validation and its timing, the verdict on a run that has barely learnt, and the plumbing of
runs over several processes.

ALP.py (the script) and bench.py (the timings) both train through `train_step`, or through
`cuda_graph.GraphedStep`, which replays the same iteration as one CUDA graph, so what bench.py times is what
ALP.py runs.
"""
import copy
import os
import re
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from data import DATASETS
from utils import duration, fail

# Attacks that may make the training pairs (names in attacks.ATTACKS).
TRAINING_ATTACKS = ("pgd-linf", "pgd-l2")

# The defaults of ALP.py's training flags, by data-set family (data.DATASETS[...].family: "cifar" for cifar10,
# cifar100 and svhn, "mnist" for mnist and fashionmnist); a flag given on the command line wins. Values are
# written as on the command line and parsed by the flag's own type. Source: the reference implementation
# (MTandHJ/PyTorch-Robust, ALP/README.md's commands, and ALP/ALP.py's argparse defaults for what its CIFAR
# command leaves out); it has no SVHN command, and SVHN's images are CIFAR's shape.
TRAINING_DEFAULTS = {
    "cifar": {  # its CIFAR-10/100 command: -lp=AT --epochs=200 -wd=0.0002 --leverage=0.5; the rest its defaults
        "learning_policy": "AT", "epochs": 200, "weight_decay": 2e-4, "leverage": 0.5,
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 128,
        "epsilon": "8/255", "steps": 10, "stepsize": "2/255",
    },
    "mnist": {  # its MNIST and FashionMNIST command, all of it
        "learning_policy": "null", "epochs": 84, "weight_decay": 0, "leverage": 0.5,
        "optimizer": "adam", "lr": 1e-4, "momentum": 0, "batch_size": 50,
        "epsilon": 0.3, "steps": 40, "stepsize": 0.01,
    },
}

# What ALP.py fixes without a flag, each with its reason.
HYP = {
    # The attack that measures robust accuracy after each epoch, by data-set family: the reference's
    # (its VALIDER table), so that our validation curves compare with its logs.
    "validation_attack": {
        "cifar": dict(epsilon=8 / 255, steps=10, stepsize=2 / 255),   # PGD-10
        "mnist": dict(epsilon=0.3, steps=100, stepsize=0.01),         # PGD-100
    },
    # Images per validation batch: no weight gradients are kept, so it can be wider than training's. On a
    # GPU, batches of 500 left an H100 mostly idle; 2000 keeps resnet18's PGD within a few GB (not yet
    # measured on a GPU). On a CPU, wider batches are slower per image: PGD-100 in float32 on 1000 real-MNIST
    # test images took 37.8-40.6 s in batches of 100 against 55.6-56.7 s in batches of 500 (an ALP-trained
    # MNIST net, one thread, this project's shared 2-core machine).
    "validation_batch": {"cuda": 2000, "cpu": 100},
    # The time estimate waits for this many training batches after the first (which pays one-off costs:
    # oneDNN's or cuDNN's choice of kernels, compilation, a CUDA graph's recording), or this many seconds of
    # them, whichever comes first.
    "timed_batches": 3,
    "timed_seconds": 15,
    # Epochs between the epoch_NNN.pt copies of the weights: 40 files over a 200-epoch run, enough to
    # look back at robust overfitting without filling the disk.
    "snapshot_every": 5,
}


def validation_batch_size(device):
    return HYP["validation_batch"]["cuda" if torch.device(device).type == "cuda" else "cpu"]


def speed_options(device, amp, channels_last, cudnn_benchmark):
    """(amp, channels_last, cudnn_benchmark): which of the speed options asked for hold on `device`.
    On CUDA all of them. On a CPU channels_last (the convolutions of oneDNN run faster on it), bf16 autocast
    only where the processor computes bf16 natively (elsewhere it is emulated, and slower than float32), and
    no cudnn."""
    if torch.device(device).type == "cuda":
        return amp, channels_last, cudnn_benchmark
    return amp and cpu_computes_bf16_natively(), channels_last, False


def cpu_computes_bf16_natively():
    """Whether this processor has bf16 arithmetic in hardware (AVX-512 BF16 or AMX), by the flags the kernel
    reports for it (Linux; False where they cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", f.read()))
    except OSError:
        return False


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


class EpochTally:
    """The running figures of a training epoch, kept on the device so that nothing waits for the GPU: the
    loss sum, the adversarial examples classified right, the image count, and the first batch whose loss
    was not finite (-1 if none). Read once, after the epoch, summed over the processes."""

    def __init__(self, device):
        self.totals = torch.zeros(3, device=device)
        self.first_bad_batch = torch.tensor(-1, device=device)
        self.batches = 0

    def add(self, loss, logits_adv, y):
        self.totals[0] += loss * len(y)
        self.totals[1] += (logits_adv.argmax(1) == y).sum()
        self.totals[2] += len(y)
        bad = (self.first_bad_batch < 0) & ~torch.isfinite(loss)
        self.first_bad_batch = torch.where(bad, self.batches, self.first_bad_batch)
        self.batches += 1

    def result(self):
        """(mean loss, adversarial accuracy, first non-finite batch or -1) over every process."""
        loss_sum, correct, count = reduce_over_processes(self.totals).tolist()
        first_bad_batch = int(reduce_over_processes(self.first_bad_batch, dist.ReduceOp.MAX))
        return loss_sum / count, correct / count, first_bad_batch


def stop_unless_finite(first_bad_batch, model, epoch, kept):
    """Ends the run (exit status 1) after an epoch whose loss, checked before each step, or whose weights,
    checked after the last, are not finite; `kept` says what the run leaves to continue from."""
    if first_bad_batch >= 0:
        fail(f"the loss became NaN or infinite at epoch {epoch + 1}, batch {first_bad_batch + 1}; stopping "
             f"({kept})", status=1)
    if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
        fail(f"the weights became NaN or infinite in epoch {epoch + 1}'s last step; stopping ({kept})", status=1)


def validate(model, loader, attack, num_classes, progress=False, desc="validating"):
    """(clean accuracy, robust accuracy, per-class counts of the clean predictions) on a validation loader;
    the counts tell a model that predicts one class, whose accuracies mean nothing yet. In float32 whatever
    autocast training runs under, as eval.py's attacks: bf16 changed PGD-100's accuracy on an ALP-trained
    MNIST net by points, and the validation curve should show the figure eval.py would give."""
    was_training = model.training
    model.eval()
    clean = robust = 0
    counts = torch.zeros(num_classes, dtype=torch.long, device=loader.labels.device)
    for x, y in tqdm(loader.epoch(), total=len(loader), disable=not progress, desc=desc, leave=False):
        x_adv = attack(model, x, y)
        with torch.no_grad():
            predicted, predicted_adv = model(x).argmax(1), model(x_adv).argmax(1)
        clean += (predicted == y).sum()
        robust += (predicted_adv == y).sum()
        counts += torch.bincount(predicted, minlength=num_classes)
    model.train(was_training)
    n = len(loader.labels)
    return clean.item() / n, robust.item() / n, counts


def validation_seconds(model, loader, attack, num_classes):
    """(seconds a validation of all of `loader` will take, images timed): from one timed validation of its
    first batch. It runs inside torch.random.fork_rng, and validation changes neither weights nor BatchNorm
    statistics, so the run goes on as if it had not happened (a resumed run stays bit-exact)."""
    device = loader.labels.device
    probe = copy.copy(loader)
    probe.images, probe.labels = loader.images[:loader.batch_size], loader.labels[:loader.batch_size]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        started = time.perf_counter()
        validate(model, probe, attack, num_classes)  # .item() waits for the device
        seconds = time.perf_counter() - started
    return seconds * len(loader.labels) / len(probe.labels), len(probe.labels)


class BatchClock:
    """Seconds per training batch, measured on the first batches a process trains: the first `untimed`
    batches are left out (they pay one-off costs; cuda_graph.GraphedStep.UNTIMED for the graph-replayed
    step, whose warm-ups and capture are not what the epoch repeats), then HYP["timed_batches"] batches or
    HYP["timed_seconds"] of them, whichever comes first. tick() after each batch returns the figure once,
    when it is ready (at the latest after the epoch's last batch, from whatever was timed), and None
    otherwise. Only the clock is read: the device is waited for at those ticks, nothing else changes."""

    def __init__(self, device, untimed=1):
        self.device = torch.device(device)
        self.ticks, self.first, self.started, self.done = 0, None, time.perf_counter(), False
        self.untimed = untimed
        self.timed = 0  # batches the figure comes from

    def tick(self, last=False):
        if self.done:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.ticks += 1
        if self.ticks <= self.untimed:
            self.first = now
            if not last:
                return None
        timed = self.ticks - self.untimed
        if last or timed >= HYP["timed_batches"] or now - self.first >= HYP["timed_seconds"]:
            if timed <= 0:  # an epoch too short to time past the untimed batches: the whole of it
                self.done, self.timed = True, self.ticks
                return (now - self.started) / self.ticks
            self.done, self.timed = True, timed
            return (now - self.first) / timed
        return None


# The lowest clean accuracy of a fully trained ALP model in the reference's tables (MTandHJ/PyTorch-Robust,
# ALP/README.md), by data set: CIFAR-10's ResNet32 at leverage 1, CIFAR-100's ResNet18 (it lists no ResNet32,
# which is smaller and lower still), the MNIST net on MNIST and Fashion-MNIST. SVHN has no row.
REFERENCE_CLEAN_ACCURACY = {"cifar10": 0.7712, "cifar100": 0.5571, "mnist": 0.9941, "fashionmnist": 0.8308}


def barely_learnt(clean, robust, dataset):
    """Why a run whose best validation figures are these has barely learnt yet, or None. Chance is
    1 / classes (the balanced validation splits of --subset, and the test splits, are about even). Robust
    accuracy at or below chance is what guessing gets under any attack. Clean accuracy below halfway from
    chance to what a fully trained model reaches (REFERENCE_CLEAN_ACCURACY; 100% where the reference has no
    figure) is far from useful: 54.7% on MNIST, 43.6% on CIFAR-10, 28.4% on CIFAR-100, so that the README's
    ResNet32 CIFAR-100 command, whose model the reference does not list, is not warned about once trained."""
    chance = 1 / DATASETS[dataset].num_classes
    halfway = (chance + REFERENCE_CLEAN_ACCURACY.get(dataset, 1.0)) / 2
    reasons = []
    if clean < halfway:
        reasons.append(f"clean {100 * clean:.2f}% is less than {100 * halfway:.1f}%, halfway from chance "
                       f"({100 * chance:.3g}%) to what a fully trained model reaches")
    if robust <= chance:
        reasons.append(f"robust {100 * robust:.2f}% is no better than chance ({100 * chance:.3g}%)")
    return "; ".join(reasons) or None


def estimate_line(training, batches_timed, validation, images_timed, epochs, validations, resumed):
    """The time the run will take, from `training` seconds per epoch and `validation` seconds per validation
    (both measured, as the line says), over the `epochs` this process runs, `validations` of them
    validated."""
    total = duration(training * epochs + validation * validations)
    epochs_text = f"{epochs} epoch{'s' if epochs > 1 else ''}"
    left = f"the {epochs_text} left" if resumed else epochs_text
    if validations == epochs:
        per_epoch = (f"{duration(training + validation)} per epoch (training {duration(training)}, validation "
                     f"{duration(validation)})")
    else:
        per_epoch = (f"{duration(training)} per epoch of training, {duration(validation)} per validation "
                     f"({validations} validated epoch{'s' if validations > 1 else ''})")
    return (f"estimated: {per_epoch}, {total} for {left} (timed on {batches_timed} training "
            f"batch{'es' if batches_timed > 1 else ''} and {images_timed} validation images)")


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


def reduce_over_processes(tensor, op=dist.ReduceOp.SUM):
    """The tensor all-reduced over the processes of the run (unchanged in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier():
    if dist.is_initialized():
        dist.barrier()


def gather_over_processes(value):
    """[value of rank 0, value of rank 1, ...] (a one-element list in a single process)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
