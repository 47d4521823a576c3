"""How wide an attack call is when no batch size is given: small on the CPU (CPU), and on CUDA as wide as the
free memory holds at the model's measured peak per image, up to the whole split (a unit of work is then at
most a tenth of a job: tests/test_evaluation_units.py). The CUDA sizing runs here on
the CPU with a fake memory probe; the real probe is exercised where a GPU is present."""
import pytest
import torch
from torch import nn

from evaluation.width import (ATTACK_STATE_IMAGES, CPU_BATCH_SIZE, CUDA_MEMORY_SHARE, PROBE_IMAGES, CudaMemory,
                              costliest_step, default_batch_size)
from models.normalize import Normalize

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # named only: the fake memory answers for it
MIB, GIB = 2 ** 20, 2 ** 30
IMAGE_BYTES = 3 * 32 * 32 * 4  # a CIFAR image in float32


class FakeMemory:
    """A CudaMemory that reports given figures and keeps what it was asked to probe."""

    def __init__(self, free, per_image):
        self.free_bytes, self.per_image, self.probed = free, per_image, []

    def free(self):
        return self.free_bytes

    def peak_bytes_per_image(self, model, x):
        self.probed.append(x)
        return self.per_image


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(Normalize((0.5,) * 3, (0.25,) * 3), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 16 * 16, 10))


def cifar_like(n):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


def test_the_cpu_keeps_small_batches_and_probes_nothing():
    memory = FakeMemory(free=80 * GIB, per_image=MIB)
    assert default_batch_size(CPU, small_model(), cifar_like(1000), memory=memory) == CPU_BATCH_SIZE
    assert memory.probed == []
    assert CPU_BATCH_SIZE <= 16  # a progress bar moves every few seconds, even under C&W


def test_a_cuda_unit_holds_what_the_free_memory_allows_at_the_measured_peak_per_image():
    memory = FakeMemory(free=10 * GIB, per_image=20 * MIB)
    width = default_batch_size(CUDA, small_model(), cifar_like(10_000), memory=memory)
    share = 10 * GIB * CUDA_MEMORY_SHARE

    def held(images):  # the measured peak and the attack's own image-sized tensors, per image
        return images * (20 * MIB + ATTACK_STATE_IMAGES * IMAGE_BYTES)
    assert held(width) <= share < held(width + 1)  # the widest unit that fits, no narrower
    assert 300 < width < 10_000
    # A heavier model (twice the peak per image) gets narrower units.
    heavier = default_batch_size(CUDA, small_model(), cifar_like(10_000), memory=FakeMemory(10 * GIB, 40 * MIB))
    assert heavier < width


def test_the_probe_measures_the_first_images_as_the_attacks_see_them():
    memory = FakeMemory(free=10 * GIB, per_image=MIB)
    images = cifar_like(1000)
    default_batch_size(CUDA, small_model(), images, memory=memory)
    (probed,) = memory.probed
    assert probed.shape == (PROBE_IMAGES, 3, 32, 32) and probed.dtype == torch.float32
    assert torch.equal(probed, images[:PROBE_IMAGES].float() / 255)


@pytest.mark.parametrize("n, processes, expected", [(10_000, 1, 10_000), (500, 1, 500), (10_000, 4, 2500),
                                                    (10_001, 4, 2501)])
def test_a_split_that_fits_is_one_unit_per_process(n, processes, expected):
    memory = FakeMemory(free=80 * GIB, per_image=MIB)
    assert default_batch_size(CUDA, small_model(), cifar_like(n), processes, memory=memory) == expected


def test_a_unit_holds_at_least_one_image():
    memory = FakeMemory(free=MIB, per_image=100 * MIB)
    assert default_batch_size(CUDA, small_model(), cifar_like(100), memory=memory) == 1


def test_the_probed_step_leaves_the_model_as_it_was():
    """The probe runs a real attack step, in eval mode: BatchNorm's running statistics are not moved by it,
    and the model comes back in training mode, its weights trainable and without gradients (CPU)."""
    torch.manual_seed(0)
    model = nn.Sequential(Normalize((0.5,) * 3, (0.25,) * 3), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    costliest_step(model, cifar_like(4).float() / 255)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_measured_width_holds_the_costliest_step():
    """CUDA: the real probe measures a positive peak, and a unit of the width it gives runs the step."""
    model = small_model().to(CUDA)
    images = cifar_like(2000).to(CUDA)
    assert CudaMemory(CUDA).peak_bytes_per_image(model, images[:PROBE_IMAGES].float() / 255) > 0
    width = default_batch_size(CUDA, model, images)
    assert 1 <= width <= len(images)
    costliest_step(model, images[:width].float() / 255)
