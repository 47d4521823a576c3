"""How wide an attack call is when no batch size is given: the images per call, small on the CPU and on CUDA
sized from the free memory and the model's measured peak per image. A unit of work is at most that wide,
and at most a tenth of its job (units.unit_size)."""
import math

import torch

from attacks.deepfool import DeepFool

from .units import as_float

# Default batch sizes. On the CPU small enough that a progress bar moves every few seconds even under C&W on
# the MNIST net (a few images/s on one thread, README's Speed section). On CUDA as wide as memory allows, up
# to the whole split (each process's share of it), for throughput: each call has fixed costs (its checks'
# host syncs, AutoAttack's set-up), which wide calls pay least often. Units stay at most a tenth of a job
# whatever the width, so that the estimate, the progress bars and what a kill loses stay small.
CPU_BATCH_SIZE = 16
CUDA_MEMORY_SHARE = 0.7  # of the free memory; the rest covers fragmentation and cuDNN's workspaces
# Image-sized float32 tensors an attack holds per sample beside the model's activations, the largest of the
# CIFAR-10 suite's, as `python tools/attack_state.py cifar` measured them (the peak of the tensors alive,
# counted at the dispatcher on a CPU, 16 images, a linear model that no attack breaks, torch 2.14):
# AutoAttack 48.0 (linf), 44.0 (l2), 46.1 (l1); DeepFool 31.0; C&W 13.6; SLIDE 9.3; PGD and FGSM 4.0.
ATTACK_STATE_IMAGES = 48
PROBE_IMAGES = 64  # enough that the step's fixed costs, shared out per image, weigh little


class CudaMemory:
    """What a CUDA unit's width is sized from: the free memory, and the peak memory per image of the costliest
    attack step, measured on the model. Anything with these two methods can stand in (the tests' fakes)."""

    def __init__(self, device):
        self.device = device

    def free(self):
        return torch.cuda.mem_get_info(self.device)[0]

    def peak_bytes_per_image(self, model, x):
        x = x.to(self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        costliest_step(model, x)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        torch.cuda.empty_cache()  # the probe's blocks back to the device, so that free() counts them
        return peak / len(x)


def costliest_step(model, x):
    """The attack step that holds the most memory per image: DeepFool's linearisation, a forward and, on
    CUDA, the backward passes of all its candidate classes as one (torch.func's vmap: the gradients of every
    candidate at once), where a PGD, C&W or AutoAttack step backpropagates one loss."""
    DeepFool(1.0, "l2", steps=1).minimize(model, x, torch.zeros(len(x), dtype=torch.long, device=x.device))


def default_batch_size(device, model, images, processes=1, memory=None):
    """The images per unit: CPU_BATCH_SIZE on the CPU. On CUDA as many as CUDA_MEMORY_SHARE of the free memory
    holds at the model's measured peak per image (memory: a CudaMemory by default) plus the attack's state, at
    most each process's share of `images` (so that every process gets units), at least 1."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    memory = memory or CudaMemory(device)
    sample = as_float(images[:PROBE_IMAGES])
    per_image = memory.peak_bytes_per_image(model, sample) + ATTACK_STATE_IMAGES * sample[0].numel() * 4
    share = math.ceil(len(images) / processes)
    return int(max(1, min(share, memory.free() * CUDA_MEMORY_SHARE // per_image)))

