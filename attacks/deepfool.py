"""DeepFool (Moosavi-Dezfooli et al. 2016) in linf and l2, as foolbox 3.3.4's LinfDeepFoolAttack and
L2DeepFoolAttack with loss="logits".

Each step linearises the logit differences to the top `candidates` classes of the clean input and moves to
the nearest linearised boundary (dual norm of the gradient in the denominator); the accumulated perturbation
is applied with (1 + overshoot) and the image clipped into [0, 1]. A sample stops as soon as it is
misclassified, so its result is the first adversarial iterate.

The loop never waits for the host between checks: a mask freezes the samples that are done, and only at a
check (every step on the CPU, every CHECK_EVERY steps on a GPU: see check_every) does the host look which are
left, to drop the others from the batch and to stop when none is.
"""
import torch

from .common import attacking, check_every, clip_to_ball, flat_norm, per_sample


def candidate_gradients(differences_of, x, batched):
    """(differences, gradients): differences_of(x) -> (B x K differences, aux), and the gradient of each of
    the K columns with respect to x, B x K x input; aux passes through: (differences, gradients, aux).

    Batched, the K backward passes run as one: torch.func's vmap over a vjp, whose batching rules cover the
    convolution, BatchNorm and gather backward passes (autograd.grad's is_grads_batched runs on the legacy
    vmap, which falls back to one slice at a time for exactly those). Unbatched, it is one backward pass per
    candidate class, retaining the forward graph between them. The CPU runs them one by one: batched was 2x
    slower there (resnet20 in eval mode, 16 CIFAR-sized images, 9 candidates, one thread: 3.0 s against
    1.5 s per linearisation). CUDA runs them batched: fewer, wider kernels."""
    if batched:
        with torch.enable_grad():
            differences, backward, aux = torch.func.vjp(differences_of, x, has_aux=True)
            k = differences.shape[1]
            basis = torch.eye(k, dtype=differences.dtype, device=x.device).unsqueeze(1).expand(k, len(x), k)
            (grads,) = torch.func.vmap(backward)(basis)
        return differences.detach(), grads.transpose(0, 1), aux
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        differences, aux = differences_of(x)
        k = differences.shape[1]
        grads = torch.stack([torch.autograd.grad(differences[:, j].sum(), x, retain_graph=j < k - 1)[0]
                             for j in range(k)], dim=1)
    return differences.detach(), grads, aux


class DeepFool:
    """`minimize` gives the unbounded minimal adversarial (foolbox's `raw`); calling the attack gives it clipped
    into the epsilon ball (foolbox's clipped output), which is adversarial only if the minimal one is small
    enough."""

    def __init__(self, epsilon, norm, steps=50, candidates=10, overshoot=0.02):
        if norm not in ("linf", "l2"):
            raise ValueError(f"DeepFool supports norm 'linf' or 'l2', not {norm!r}")
        self.epsilon, self.norm, self.steps = epsilon, norm, steps
        self.candidates, self.overshoot = candidates, overshoot

    def __call__(self, model, x, y):
        x_min = self.minimize(model, x, y)
        return (x + clip_to_ball(x_min - x, self.epsilon, self.norm)).clamp(0, 1)

    def minimize(self, model, x, y):
        with attacking(model):
            with torch.no_grad():
                logits = model(x).float()
            n_candidates = min(self.candidates or logits.shape[1], logits.shape[1])
            if n_candidates < 2:
                raise ValueError("DeepFool needs at least 2 classes")
            # Candidates ranked on the clean input, once: the top class first (foolbox's order, ties included).
            classes = logits.argsort(dim=1).flip(1)[:, :n_candidates]
            x_adv, p_total = x.clone(), torch.zeros_like(x)
            active = torch.ones(len(x), dtype=torch.bool, device=x.device)  # not yet misclassified
            rows = torch.arange(len(x), device=x.device)  # the batch worked on: all active ones at the last check
            every = check_every(x.device)
            for step in range(self.steps):
                logits, losses, grads = self._linearisation(model, x_adv[rows], classes[rows])
                still_correct = active[rows] & (logits.argmax(dim=1) == y[rows])
                active[rows] = still_correct
                mask = per_sample(still_correct, x)
                p = torch.where(mask, p_total[rows] + self._step(losses, grads), p_total[rows])
                p_total[rows] = p
                x_adv[rows] = torch.where(mask, (x[rows] + (1 + self.overshoot) * p).clamp(0, 1), x_adv[rows])
                if (step + 1) % every == 0:
                    rows = active.nonzero().flatten()
                    if len(rows) == 0:
                        break
        return x_adv

    def _linearisation(self, model, x, classes):
        """Logits at x, and for each candidate k >= 1 the difference logit_k - logit_top (B x K-1) and its
        gradient with respect to x (B x K-1 x input): one forward, and one backward pass per candidate, or
        all of them as one on CUDA (see candidate_gradients)."""
        rows = torch.arange(len(x), device=x.device)

        def differences_of(x):
            logits = model(x).float()
            return logits.gather(1, classes[:, 1:]) - logits[rows, classes[:, 0]].unsqueeze(1), logits.detach()

        differences, grads, logits = candidate_gradients(differences_of, x.detach(),
                                                         batched=x.device.type == "cuda")
        return logits, differences, grads

    def _step(self, losses, grads):
        """Step to the nearest linearised boundary: distance |loss| / ||grad||_dual, then that far along the
        steepest direction (sign for linf, grad / ||grad||_2 for l2). The 1e-4 pushes slightly past it."""
        dual = "l1" if self.norm == "linf" else "l2"
        distances = losses.abs() / (flat_norm(grads.flatten(0, 1), dual).view(losses.shape) + 1e-8)
        best = distances.argmin(dim=1)
        rows = torch.arange(len(losses), device=losses.device)
        distance, grad = distances[rows, best] + 1e-4, grads[rows, best]
        if self.norm == "linf":
            return per_sample(distance, grad) * grad.sign()
        return per_sample(distance / (flat_norm(grad, "l2") + 1e-8), grad) * grad
