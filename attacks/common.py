"""What every attack shares: the attacking context, input gradients, and the geometry of the threat models.

Images are in [0, 1] (the model normalises); perturbations are measured per sample over all of its
pixels. `norm` is one of "linf", "l2", "l1".
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F

NORMS = ("linf", "l2", "l1")
# On a GPU, attacks that stop early ask the host whether anything is left to do (a wait for the device) once
# per this many steps, and keep finished samples unchanged with masks in between (see check_every).
CHECK_EVERY = 10
_P = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}


def device_of(model, default=torch.device("cpu")):
    """Where the model's weights are (its buffers' device for a model without parameters; `default` for
    one with neither)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return default if tensor is None else tensor.device


def check_every(device):
    """Steps between two looks of the host at which samples are done, and so between two narrowings of the
    batch to the rest. On the CPU the host is the device: a look costs nothing, and narrowing at every step
    spares finished samples their steps (DeepFool 1.4x to 1.6x faster than every CHECK_EVERY steps, 16 images
    of a small MNIST CNN, one thread). Elsewhere each look waits for the device to finish its queue."""
    return 1 if device.type == "cpu" else CHECK_EVERY


@contextmanager
def attacking(model):
    """Eval mode and frozen parameters for the duration of an attack, both restored afterwards.

    Freezing matters for speed, not only hygiene: with requires_grad off, autograd neither stores the
    activations that weight gradients need nor computes those gradients, so one attack step costs a forward
    and an input-only backward (about 1.4x cheaper per ALP iteration on CPU than loss.backward())."""
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def logits_and_gradient(model, x, loss_fn):
    """Logits at x and the gradient of loss_fn(logits) (a scalar) with respect to x alone."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()  # losses in float32 even when the forward ran under bf16 autocast
        (grad,) = torch.autograd.grad(loss_fn(logits), x)
    return logits.detach(), grad


def cross_entropy_gradient(model, x, y):
    """Gradient of the summed cross-entropy: summing keeps each sample's gradient independent of the
    batch size."""
    return logits_and_gradient(model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"))[1]


def flat_norm(v, norm):
    """Per-sample lp norm of a batch, over all non-batch dimensions."""
    return torch.linalg.vector_norm(v.flatten(1), ord=_P[norm], dim=1)


def per_sample(v, like):
    """A per-sample vector (B) shaped to broadcast over a batch like `like` (B x ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def normalize(grad, norm):
    """Steepest-ascent direction of unit norm: the sign for linf, grad / ||grad||_p for l2 and l1."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(flat_norm(grad, norm).clamp_min(1e-12), grad)


def clip_to_ball(delta, epsilon, norm):
    """Clip a perturbation into the epsilon ball: per coordinate for linf, by rescaling for l2 and l1
    (for l1 that is not the Euclidean projection; foolbox's PGD does the same)."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    factor = (epsilon / flat_norm(delta, norm).clamp_min(1e-12)).clamp(max=1.0)
    return delta * per_sample(factor, delta)


def random_in_ball(x, epsilon, norm):
    """A point uniformly distributed in the epsilon ball around each sample."""
    n = x[0].numel()
    if norm == "linf":
        return torch.empty_like(x).uniform_(-epsilon, epsilon)
    if norm == "l2":
        # Voelker et al. 2017: the first n coordinates of a uniform point on the (n+1)-sphere in R^(n+2)
        # are uniform in the n-ball.
        g = torch.randn(len(x), n + 2, device=x.device, dtype=x.dtype)
        u = (g / g.norm(dim=1, keepdim=True))[:, :n]
    else:
        # Gaps between sorted uniforms are uniform on the simplex (mathoverflow 9188); random signs then
        # fill the l1 ball.
        v = torch.rand(len(x), n, device=x.device, dtype=x.dtype).sort(dim=1).values
        gaps = torch.diff(v, dim=1, prepend=torch.zeros_like(v[:, :1]))
        u = gaps * (torch.randint(0, 2, gaps.shape, device=x.device, dtype=x.dtype) * 2 - 1)
    return epsilon * u.view_as(x)
