import torch
from torch import nn

from .normalize import Normalize


def he_truncated_normal_(weight, fan_in):
    """TensorFlow 1.8's variance_scaling_initializer(scale=2.0, mode='fan_in', distribution='normal'), the
    reference's 'He': a normal of std sqrt(2 / fan_in) cut at two standard deviations, whose std is not
    corrected for the cut (later TensorFlow versions divide it by 0.8796)."""
    std = (2.0 / fan_in) ** 0.5
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class LeNet(nn.Module):
    """The MNIST network of Mosbach et al. 2018, "Logit Pairing Methods Can Fool Gradient-Based Attacks"
    (uds-lsv/evaluating-logit-pairing-methods, mnist_cifar10/models.py, LeNet with its defaults: 32 filters,
    no BatchNorm): conv 3x3 32 (SAME) - max-pool 2 - conv 3x3 64 (SAME) - max-pool 2 - fc 1024 - fc 10, ReLU
    after each layer but the last. Every weight He-initialised over its fan-in, every bias zero.

    Their TensorFlow network flattens its features in height-width-channel order, this one in channel-height-
    width order: the same function up to a fixed permutation of fc1's input rows, which the random init does
    not see. Built for 28x28 images (7 x 7 x 64 features after the two pools)."""

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(len(mean), 32, 3, padding=1)  # SAME with stride 1: padding 1 for a 3x3 kernel
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
            he_truncated_normal_(layer.weight, fan_in=layer.weight[0].numel())
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        out = nn.functional.max_pool2d(torch.relu(self.conv1(self.normalize(x))), 2)  # 28 -> 14
        out = nn.functional.max_pool2d(torch.relu(self.conv2(out)), 2)  # 14 -> 7
        return self.fc2(torch.relu(self.fc1(out.flatten(1))))
