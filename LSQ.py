"""Logit Squeezing (Kannan, Kurakin & Goodfellow, 2018), as Mosbach et al. (2018) train it.

Add Gaussian noise to each training image and penalise the size of the logits:

    loss = CE(f(x'), y) + squeeze_weight * mean over the batch of ||f(x')||_2
    x'   = clip(x + noise_std * N(0, 1), 0, 1)

No adversarial example is made: an iteration costs one forward and one backward pass. --squeeze-weight 0
--noise-std 0 is plain training, Mosbach et al.'s "Plain" row.

    python LSQ.py lenet mnist                 # Mosbach et al.'s MNIST settings (training/hyp.py)
    torchrun --nproc_per_node=K LSQ.py ...    # one process per GPU, as ALP.py
"""
from interrupts import stop_in_one_line

if __name__ == "__main__":
    stop_in_one_line()  # first: a Ctrl-C while torch imports ends in one line too

import functools
from contextlib import nullcontext

import torch.nn.functional as F

from training import loop
from training.noise import noisy_step


def lsq_loss(model, x, y, squeeze_weight):
    """The LSQ objective on a batch x (already noise-augmented) and the batch's logits, as Mosbach et al.'s
    code computes it (mnist_cifar10/train.py and train_utils.py): the cross-entropy on the noise-augmented
    images, and the Euclidean norm of each image's logits averaged over the batch (their
    reduce_mean(norm(logits, axis=1))). One forward pass where their code runs two: the same logits for a
    network without BatchNorm or dropout, such as their LeNet. Logits go to float32 first, so bf16 autocast
    never reaches the losses."""
    logits = model(x).float()
    return F.cross_entropy(logits, y) + squeeze_weight * logits.norm(dim=1).mean(), logits


def train_step(model, optimizer, x, y, noise_std, squeeze_weight, autocast=nullcontext):
    """One LSQ iteration: noise the batch, compute the loss, step (training.noise.noisy_step)."""
    loss = functools.partial(lsq_loss, squeeze_weight=squeeze_weight)
    return noisy_step(model, optimizer, x, y, noise_std, loss, autocast)


def make_iteration(args, optimizer, autocast):
    """LSQ's iteration with this run's values (training/loop.py). It makes no attack: the network for
    attacks goes unused."""
    def iteration(train_model, attack_model, x, y):
        return train_step(train_model, optimizer, x, y, args.noise_std, args.squeeze_weight, autocast)
    return iteration


def main(argv=None):
    """Train as the command line says; returns the trained model, or None when --resume finds the run
    finished."""
    return loop.main(argv, "LSQ", __doc__, make_iteration)


if __name__ == "__main__":
    main()
