"""The Gaussian input noise that CLP.py and LSQ.py train with."""
import torch


def with_gaussian_noise(x, std):
    """Images x in [0, 1] plus Gaussian noise of standard deviation `std`, clipped back to [0, 1]: Mosbach et
    al.'s augmentation (their data_loader.py adds the noise to each training image and clamps it), drawn
    afresh at every iteration as their loader draws it afresh at every epoch. std 0 returns x itself."""
    if std == 0:
        return x
    return (x + std * torch.randn_like(x)).clamp(0, 1)
