"""Projected gradient descent on the cross-entropy (Madry et al. 2018), in linf, l2 and l1, and FGSM as
its one-step special case. The same code makes ALP's training pairs and the evaluation attacks.

Definitions follow foolbox 3.3.4, which produced the reference numbers: the step is the normalised
gradient (sign for linf) times the step size; after each step the perturbation is clipped into the ball
(rescaled for l2/l1) and the image into [0, 1]; the last iterate is returned.
"""
from .common import attacking, clip_to_ball, cross_entropy_gradient, normalize, random_in_ball, NORMS


class PGD:
    """`steps` steps of size `stepsize` (absolute) or `rel_stepsize` * epsilon, from a uniform random start in
    the ball unless random_start=False."""

    def __init__(self, epsilon, norm="linf", steps=10, stepsize=None, rel_stepsize=None, random_start=True):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if (stepsize is None) == (rel_stepsize is None):
            raise ValueError("give exactly one of stepsize and rel_stepsize")
        self.epsilon, self.norm, self.steps, self.random_start = epsilon, norm, steps, random_start
        self.stepsize = stepsize if stepsize is not None else rel_stepsize * epsilon

    def __call__(self, model, x, y):
        with attacking(model):
            x_adv = x
            if self.random_start:
                x_adv = (x + random_in_ball(x, self.epsilon, self.norm)).clamp(0, 1)
            for _ in range(self.steps):
                grad = cross_entropy_gradient(model, x_adv, y)
                x_adv = x_adv + self.stepsize * normalize(grad, self.norm)
                x_adv = (x + clip_to_ball(x_adv - x, self.epsilon, self.norm)).clamp(0, 1)
        return x_adv.detach()


def FGSM(epsilon):
    """Fast gradient sign method (Goodfellow et al. 2015): one linf step of size epsilon, no random start."""
    return PGD(epsilon, "linf", steps=1, stepsize=epsilon, random_start=False)
