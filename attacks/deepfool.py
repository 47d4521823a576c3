"""DeepFool (Moosavi-Dezfooli et al. 2016) in linf and l2, as foolbox 3.3.4's LinfDeepFoolAttack and
L2DeepFoolAttack with loss="logits".

Each step linearises the logit differences to the top `candidates` classes of the clean input and moves to
the nearest linearised boundary (dual norm of the gradient in the denominator); the accumulated perturbation
is applied with (1 + overshoot) and the image clipped into [0, 1]. A sample stops as soon as it is
misclassified, so its result is the first adversarial iterate.
"""
import torch

from .common import attacking, clip_to_ball, flat_norm


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
            active = torch.arange(len(x), device=x.device)  # samples not yet misclassified
            for _ in range(self.steps):
                logits, losses, grads = self._linearisation(model, x_adv[active], classes[active])
                still_correct = logits.argmax(dim=1) == y[active]
                active, losses, grads = active[still_correct], losses[still_correct], grads[still_correct]
                if len(active) == 0:
                    break
                p_total[active] += self._step(losses, grads)
                x_adv[active] = (x[active] + (1 + self.overshoot) * p_total[active]).clamp(0, 1)
        return x_adv

    def _linearisation(self, model, x, classes):
        """Logits at x, and for each candidate k >= 1 the difference logit_k - logit_top (B x K-1) and its
        gradient with respect to x (B x K-1 x input): one forward, one backward per candidate."""
        x = x.detach().requires_grad_(True)
        rows = torch.arange(len(x), device=x.device)
        with torch.enable_grad():
            logits = model(x).float()
            differences = logits.gather(1, classes[:, 1:]) - logits[rows, classes[:, 0]].unsqueeze(1)
            grads = [torch.autograd.grad(differences[:, k].sum(), x, retain_graph=k < differences.shape[1] - 1)[0]
                     for k in range(differences.shape[1])]
        return logits.detach(), differences.detach(), torch.stack(grads, dim=1)

    def _step(self, losses, grads):
        """Step to the nearest linearised boundary: distance |loss| / ||grad||_dual, then that far along the
        steepest direction (sign for linf, grad / ||grad||_2 for l2). The 1e-4 pushes slightly past it."""
        dual = "l1" if self.norm == "linf" else "l2"
        distances = losses.abs() / (flat_norm(grads.flatten(0, 1), dual).view(losses.shape) + 1e-8)
        best = distances.argmin(dim=1)
        rows = torch.arange(len(losses), device=losses.device)
        distance, grad = distances[rows, best] + 1e-4, grads[rows, best]
        shape = (-1,) + (1,) * (grad.dim() - 1)
        if self.norm == "linf":
            return distance.view(shape) * grad.sign()
        return (distance / (flat_norm(grad, "l2") + 1e-8)).view(shape) * grad
