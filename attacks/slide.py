"""Sparse l1 descent (SLIDE, Tramèr & Boneh 2019): PGD in the l1 ball whose steps move only the coordinates
with the largest gradients, which is what makes l1 PGD effective (a plain l1-normalised gradient step spreads
its budget over every pixel and barely moves any).

The step follows foolbox 3.3.4's SparseL1DescentAttack (no random start, last iterate returned). The
projection does not: foolbox's is off by one in the sort index, so its result can lie outside the ball, and
when any sample of the batch is outside the ball it also moves the samples that are inside. Here it is the
exact Euclidean projection of Duchi et al. 2008.
"""
import torch

from .common import attacking, cross_entropy_gradient


def per_sample_quantile(values, q):
    """The q-quantile of each row of a 2-d tensor, linearly interpolated as numpy's default method. Two
    kthvalue selections instead of torch.quantile, which sorts every row and refuses inputs over 2^24
    elements (a few hundred CIFAR images already come close)."""
    n = values.shape[1]
    position = q * (n - 1)
    below = int(position)
    above = min(below + 1, n - 1)
    low = values.kthvalue(below + 1, dim=1).values  # kthvalue counts from 1
    high = values.kthvalue(above + 1, dim=1).values if above != below else low
    return low + (position - below) * (high - low)


def sparse_sign_direction(grad, x, quantile):
    """The l1-normalised sign of the gradient on its largest coordinates (|grad| at or above the per-sample
    quantile). Coordinates at the edge of [0, 1] whose step would leave the box are dropped first, so the
    step's budget goes to pixels that can still move."""
    stuck = ((x == 0) & (grad < 0)) | ((x == 1) & (grad > 0))
    grad = grad.masked_fill(stuck, 0)
    magnitude = grad.abs().flatten(1)
    threshold = per_sample_quantile(magnitude, quantile).unsqueeze(1)
    direction = torch.where(magnitude >= threshold, grad.flatten(1).sign(), torch.zeros_like(magnitude))
    direction = direction / direction.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
    return direction.view_as(grad)


def project_l1_ball(delta, epsilon):
    """Euclidean projection of each sample onto the l1 ball of radius epsilon (Duchi et al. 2008, Fig. 1):
    soft-threshold |delta| by the theta that brings its l1 norm down to epsilon; samples already inside are
    returned unchanged."""
    flat = delta.flatten(1)
    magnitude = flat.abs()
    sorted_desc = magnitude.sort(dim=1, descending=True).values
    cumulative = sorted_desc.cumsum(dim=1)
    ranks = torch.arange(1, flat.shape[1] + 1, device=delta.device, dtype=delta.dtype)
    # rho: the largest rank whose coordinate stays positive after thresholding at (cumulative - eps) / rank.
    positive = sorted_desc * ranks > cumulative - epsilon
    rho = (positive * ranks).amax(dim=1).long().clamp_min(1)
    theta = (cumulative.gather(1, (rho - 1).unsqueeze(1)) - epsilon) / rho.unsqueeze(1)
    theta = theta.clamp_min(0)  # inside the ball theta <= 0: nothing to shrink
    return (flat.sign() * (magnitude - theta).clamp_min(0)).view_as(delta)


class SLIDE:
    """`steps` sparse l1 steps of size rel_stepsize * epsilon, each on the coordinates whose |gradient| is at
    or above the `quantile` quantile of the sample, projected onto the l1 ball and into [0, 1]."""

    norm = "l1"

    def __init__(self, epsilon, steps=50, rel_stepsize=0.05, quantile=0.99):
        if not 0 <= quantile <= 1:
            raise ValueError(f"quantile must lie in [0, 1], not {quantile}")
        self.epsilon, self.steps, self.quantile = epsilon, steps, quantile
        self.stepsize = rel_stepsize * epsilon

    def __call__(self, model, x, y):
        with attacking(model):
            x_adv = x
            for _ in range(self.steps):
                grad = cross_entropy_gradient(model, x_adv, y)
                x_adv = x_adv + self.stepsize * sparse_sign_direction(grad, x_adv, self.quantile)
                x_adv = (x + project_l1_ball(x_adv - x, self.epsilon)).clamp(0, 1)
        return x_adv.detach()
