"""Carlini & Wagner's l2 attack (Carlini & Wagner 2017), as foolbox 3.3.4's L2CarliniWagnerAttack.

The image is optimised as tanh of an unbounded variable, so it never leaves [0, 1] and Adam needs no
projection. The loss is const * max(0, logit_label - best other logit + confidence) plus the squared l2
distance; a per-sample binary search (exponential until a first success) looks for the smallest const that
still gives an adversarial, and the smallest adversarial seen at any step is kept.

With stop_inside_ball, a sample leaves the search once it holds an adversarial example inside the epsilon
ball: the attack's output at epsilon (that example) can then no longer change from adversarial to not, so
the steps it would still take are spent only on making it smaller.

The early abort (abort_early) watches each sample's own loss: a sample whose loss did not fall over a tenth of
the steps stops its search step, and is dropped from the batch at the next check. Foolbox watches the batch's
summed loss instead, which is the same for a batch of one image; in a wider batch it keeps every stalled
sample stepping for as long as any other still improves (most of the attack's work, on a robust model).

Nothing is read back from the device between checks (see check_every): masks keep what a sample found from
the steps the batch still takes after the sample left the search or the early abort stopped the search step.
"""
import math

import torch

from .common import attacking, check_every, clip_to_ball, flat_norm, per_sample


def to_tanh_space(x):
    """[0, 1] -> R; the factor keeps +-1 off atanh's poles (foolbox uses the same)."""
    return torch.atanh((2 * x - 1) * 0.999999)


def from_tanh_space(w):
    return torch.tanh(w) * 0.5 + 0.5


class Adam:
    """torch.optim.Adam's update (its defaults, the same arithmetic, the same figures) on one tensor, with the
    step count a Python int. torch's keeps it in a CPU tensor and reads it with .item() at every step: no wait
    for a GPU, but on the CPU, where the tests count host syncs at the dispatcher, such a read looks like one,
    and the count could no longer hold C&W to one look per CHECK_EVERY steps."""

    def __init__(self, parameter, lr, betas=(0.9, 0.999), eps=1e-8):
        self.parameter, self.lr, self.betas, self.eps, self.steps = parameter, lr, betas, eps, 0
        self.average = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        self.average_square = torch.zeros_like(parameter, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, gradient):
        beta1, beta2 = self.betas
        self.steps += 1
        self.average.lerp_(gradient, 1 - beta1)
        self.average_square.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        denominator = (self.average_square.sqrt() / math.sqrt(1 - beta2 ** self.steps)).add_(self.eps)
        self.parameter.addcdiv_(self.average, denominator, value=-self.lr / (1 - beta1 ** self.steps))


class CarliniWagnerL2:
    """`minimize` gives the smallest adversarial found (foolbox's `raw`); calling the attack gives it clipped
    into the epsilon ball. Unlike foolbox, which returns an all-zero image for a sample it never fools (whose
    clipped version can then be adversarial by accident), such samples come back unchanged. With
    stop_inside_ball, `minimize` stops at the first adversarial found inside the epsilon ball (see above)."""

    norm = "l2"

    def __init__(self, epsilon, binary_search_steps=9, steps=1000, stepsize=0.01, confidence=0,
                 initial_const=1e-3, abort_early=True, stop_inside_ball=False):
        self.epsilon, self.binary_search_steps, self.initial_const = epsilon, binary_search_steps, initial_const
        self.steps, self.stepsize, self.confidence, self.abort_early = steps, stepsize, confidence, abort_early
        self.stop_inside_ball = stop_inside_ball

    def __call__(self, model, x, y):
        x_min = self.minimize(model, x, y)
        return (x + clip_to_ball(x_min - x, self.epsilon, "l2")).clamp(0, 1)

    def minimize(self, model, x, y):
        n = len(x)
        w0 = to_tanh_space(x)
        x_reconstructed = from_tanh_space(w0)  # the distance term is measured from here, so it is 0 at delta = 0
        # The search in float64 (as foolbox's, in numpy); the loss gets the consts in x's dtype.
        consts = torch.full((n,), float(self.initial_const), dtype=torch.float64, device=x.device)
        lower = torch.zeros_like(consts)
        upper = torch.full_like(consts, math.inf)
        best, best_norms = x.clone(), torch.full((n,), math.inf, device=x.device)
        searching = torch.ones(n, dtype=torch.bool, device=x.device)  # all, unless stop_inside_ball
        # The batch worked on (rows): a superset of the samples still searched and running (those left are
        # masked), narrowed to them at each check (see check_every), the only time the host reads anything back.
        every = check_every(x.device)
        abort_check_every = math.ceil(self.steps / 10)
        with attacking(model):
            for search_step in range(self.binary_search_steps):
                if search_step == self.binary_search_steps - 1 and self.binary_search_steps >= 10:
                    consts = upper.clamp(max=1e10)  # a long search ends with one more try at the best const
                rows = torch.arange(n, device=x.device)  # every sample searched: the first check narrows it
                delta = torch.zeros_like(w0, requires_grad=True)
                optimizer = Adam(delta, lr=self.stepsize)
                found = torch.zeros(n, dtype=torch.bool, device=x.device)
                running = torch.ones(n, dtype=torch.bool, device=x.device)  # each until its early abort
                loss_at_last_check = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
                consts_now = consts.to(x.dtype)
                for step in range(self.steps):
                    # A sample out of the search gets no gradient; its delta is never read again.
                    weights = (searching[rows] & running[rows]).to(x.dtype)
                    with torch.enable_grad():
                        x_adv = from_tanh_space(w0[rows] + delta[rows])
                        logits = model(x_adv).float()
                        losses = self._losses(logits, y[rows], consts_now[rows], x_adv, x_reconstructed[rows],
                                              weights)
                        (gradient,) = torch.autograd.grad(losses.sum(), delta)
                    optimizer.step(gradient)
                    if self.abort_early and step % abort_check_every == 0:
                        # A sample's Adam is stopped when a tenth of its steps did not lower its loss: from
                        # here on nothing of its search step is kept.
                        losses = losses.detach().double()
                        running[rows] = running[rows] & (losses <= 0.9999 * loss_at_last_check[rows])
                        loss_at_last_check[rows] = losses
                    x_adv, logits = x_adv.detach(), logits.detach()
                    adversarial = self._is_adversarial(logits, y[rows]) & searching[rows] & running[rows]
                    found[rows] = found[rows] | adversarial
                    norms = flat_norm(x_adv - x[rows], "l2")
                    improved = adversarial & (norms < best_norms[rows])
                    best[rows] = torch.where(per_sample(improved, x), x_adv, best[rows])
                    best_norms[rows] = torch.where(improved, norms, best_norms[rows])
                    if self.stop_inside_ball:
                        searching[rows] = searching[rows] & (best_norms[rows] > self.epsilon)
                    if (step + 1) % every == 0:
                        left = (searching & running).nonzero().flatten()
                        if len(left) == 0:
                            break
                        rows = left
                upper = torch.where(found, consts, upper)
                lower = torch.where(found, lower, consts)
                consts = torch.where(upper.isinf(), consts * 10, (lower + upper) / 2)
        return best

    def _losses(self, logits, y, consts, x_adv, x_reference, weights):
        """Each sample's loss times its weight: those with weight 0 add nothing, nor get a gradient."""
        label_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        best_other = logits.scatter(1, y.unsqueeze(1), -math.inf).amax(dim=1)
        misclassification = (label_logit - best_other + self.confidence).clamp_min(0) * consts
        distance = (x_adv - x_reference).flatten(1).square().sum(dim=1)
        return (misclassification + distance) * weights

    def _is_adversarial(self, logits, y):
        """Misclassified even with the label's logit raised by the confidence margin."""
        raised = logits.clone()
        raised[torch.arange(len(y), device=y.device), y] += self.confidence
        return raised.argmax(dim=1) != y
