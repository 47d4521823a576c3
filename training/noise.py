"""The Gaussian input noise that CLP.py and LSQ.py train with, and their iteration around it."""
from contextlib import nullcontext

import torch


def with_gaussian_noise(x, std):
    """Images x in [0, 1] plus Gaussian noise of standard deviation `std`, clipped back to [0, 1]: Mosbach et
    al.'s augmentation (their data_loader.py adds the noise to each training image and clamps it), drawn
    afresh at every iteration as their loader draws it afresh at every epoch. std 0 returns x itself."""
    if std == 0:
        return x
    return (x + std * torch.randn_like(x)).clamp(0, 1)


def noisy_step(model, optimizer, x, y, noise_std, loss, autocast=nullcontext):
    """One iteration of CLP or LSQ: noise the batch, compute the script's loss(model, x_noisy, y) -> (loss,
    logits), step. Returns both detached."""
    x_noisy = with_gaussian_noise(x, noise_std)
    model.train()
    with autocast():
        value, logits = loss(model, x_noisy, y)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value.detach(), logits.detach()
