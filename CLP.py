"""Clean Logit Pairing (Kannan, Kurakin & Goodfellow, 2018), as Mosbach et al. (2018) train it.

Add Gaussian noise to each training image, pair the images of the batch at random, and pull the logits of
each pair together:

    loss = CE(f(x'), y) + pairing_weight * MSE(f(x'[:n/2]), f(x'[n/2:]))
    x'   = clip(x + noise_std * N(0, 1), 0, 1)

No adversarial example is made: an iteration costs one forward and one backward pass.

    python CLP.py lenet mnist                 # Mosbach et al.'s MNIST settings (training/hyp.py)
    torchrun --nproc_per_node=K CLP.py ...    # one process per GPU, as ALP.py
"""
from interrupts import stop_in_one_line

if __name__ == "__main__":
    stop_in_one_line()  # first: a Ctrl-C while torch imports ends in one line too

import functools
from contextlib import nullcontext

import torch.nn.functional as F

from training import loop
from training.noise import noisy_step


def clp_loss(model, x, y, pairing_weight):
    """The CLP objective on a batch x (already noise-augmented) and the batch's logits, as Mosbach et al.'s
    code computes it (mnist_cifar10/train.py and train_utils.py):
    - the cross-entropy is on the noise-augmented images, the same images the pairs take (the ALP paper
      speaks of pairs of clean examples; their data loader has noised every training image before the loss);
    - a pair is image i of the batch's first half and image i of its second half: their loader shuffles
      each epoch, so pairs are random. Their code needs an even batch; an odd one leaves its last image out
      of the pairs here (it still counts in the cross-entropy);
    - MSE averaged over all logits of the pairs (tf.losses.mean_squared_error).
    One forward pass of the whole batch, where their code runs three (the batch, then each half): the same
    logits for a network without BatchNorm or dropout, such as their LeNet. Logits go to float32 first, so
    bf16 autocast never reaches the losses."""
    logits = model(x).float()
    half = len(y) // 2
    pairing = (F.mse_loss(logits[:half], logits[half:2 * half]) if half else logits.new_zeros(()))
    return F.cross_entropy(logits, y) + pairing_weight * pairing, logits


def train_step(model, optimizer, x, y, noise_std, pairing_weight, autocast=nullcontext):
    """One CLP iteration: noise the batch, compute the loss, step (training.noise.noisy_step)."""
    loss = functools.partial(clp_loss, pairing_weight=pairing_weight)
    return noisy_step(model, optimizer, x, y, noise_std, loss, autocast)


def make_iteration(args, optimizer, autocast):
    """CLP's iteration with this run's values (training/loop.py). It makes no attack: the network for
    attacks goes unused."""
    def iteration(train_model, attack_model, x, y):
        return train_step(train_model, optimizer, x, y, args.noise_std, args.pairing_weight, autocast)
    return iteration


def main(argv=None):
    """Train as the command line says; returns the trained model, or None when --resume finds the run
    finished."""
    return loop.main(argv, "CLP", __doc__, make_iteration)


if __name__ == "__main__":
    main()
