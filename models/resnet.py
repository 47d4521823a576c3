"""Residual networks for 32x32 inputs: the 3-stage CIFAR ResNet (He et al. 2016, Sec. 4.2) and the
4-stage ImageNet ResNet with a 3x3 stem and no max-pool (resnet18/34)."""
from torch import nn
import torch.nn.functional as F

from .normalize import Normalize


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:  # 1x1 projection where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stages(widths, blocks_per_stage, in_channels):
    layers = []
    for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(in_channels, width, stride))
            in_channels = width
    return nn.Sequential(*layers)


class _ResNetBase(nn.Module):
    def __init__(self, widths, blocks_per_stage, num_classes, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(len(mean), widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stages = _stages(widths, blocks_per_stage, widths[0])
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        out = self.stages(self.stem(self.normalize(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class CifarResNet(_ResNetBase):
    """16/32/64 channels, `blocks_per_stage` blocks in each of 3 stages: resnet32 has 5 (0.46 M params)."""

    def __init__(self, num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), blocks_per_stage=5):
        super().__init__((16, 32, 64), (blocks_per_stage,) * 3, num_classes, mean, std)


class ResNet(_ResNetBase):
    """64/128/256/512 channels; blocks_per_stage (2, 2, 2, 2) is resnet18 (11.2 M params)."""

    def __init__(self, num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), blocks_per_stage=(2, 2, 2, 2)):
        super().__init__((64, 128, 256, 512), blocks_per_stage, num_classes, mean, std)
