"""Residual networks for 32x32 inputs, built as the reference builds them so that their state_dicts (less our
`normalize` buffers) carry the reference's key names and shapes, and a reference `paras.pt` loads as is:

- the 3-stage CIFAR ResNet of He et al. 2016, Sec. 4.2 (resnet20..110): `conv0`/`bn0`, `layer1..3`, `fc`,
  with a bare 1x1 convolution `shortway` (no BatchNorm) where a block changes the shape;
- torchvision's BasicBlock ResNet with a 3x3 stride-1 stem and no max-pool (resnet18/34): `conv1`/`bn1`,
  `layer1..4`, `fc`, with `downsample` = 1x1 convolution + BatchNorm.

Submodules are registered in the reference's order, so the init loop visits them in the same order.
"""
from torch import nn
import torch.nn.functional as F

from .normalize import Normalize


def conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


def conv1x1(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); subclasses name and build the shortcut."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def shortcut(self, x):
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarBlock(BasicBlock):
    """The reference's CIFAR block: where the shape changes, the shortcut is a bare strided 1x1 convolution."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__(in_channels, out_channels, stride)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortway = conv1x1(in_channels, out_channels, stride) if changes_shape else None

    def shortcut(self, x):
        return x if self.shortway is None else self.shortway(x)


class TorchvisionBlock(BasicBlock):
    """torchvision's BasicBlock: where the shape changes, the shortcut is a 1x1 convolution and a BatchNorm."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__(in_channels, out_channels, stride)
        changes_shape = stride != 1 or in_channels != out_channels
        self.downsample = (nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
                           if changes_shape else None)

    def shortcut(self, x):
        return x if self.downsample is None else self.downsample(x)


def layer(block, in_channels, out_channels, blocks, stride):
    """`blocks` blocks; the first one changes the width and the stride."""
    return nn.Sequential(block(in_channels, out_channels, stride),
                         *(block(out_channels, out_channels, 1) for _ in range(blocks - 1)))


def init_like_reference(model):
    """Both references: every convolution Kaiming-normal for ReLU over fan-out, every BatchNorm the identity;
    the Linear head keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pooled_logits(fc, features):
    return fc(F.adaptive_avg_pool2d(features, 1).flatten(1))


class CifarResNet(nn.Module):
    """16/32/64 channels, `blocks_per_stage` blocks in each of 3 stages: 6n+2 layers, resnet32 has n = 5."""

    def __init__(self, num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), blocks_per_stage=5):
        super().__init__()
        n = blocks_per_stage
        self.normalize = Normalize(mean, std)
        self.conv0 = conv3x3(len(mean), 16)
        self.bn0 = nn.BatchNorm2d(16)
        self.layer1 = layer(CifarBlock, 16, 16, n, stride=1)
        self.layer2 = layer(CifarBlock, 16, 32, n, stride=2)
        self.layer3 = layer(CifarBlock, 32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        init_like_reference(self)

    def forward(self, x):
        out = F.relu(self.bn0(self.conv0(self.normalize(x))))
        return pooled_logits(self.fc, self.layer3(self.layer2(self.layer1(out))))


class ResNet(nn.Module):
    """64/128/256/512 channels; blocks_per_stage (2, 2, 2, 2) is resnet18, (3, 4, 6, 3) resnet34."""

    def __init__(self, num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), blocks_per_stage=(2, 2, 2, 2)):
        super().__init__()
        blocks1, blocks2, blocks3, blocks4 = blocks_per_stage
        self.normalize = Normalize(mean, std)
        self.conv1 = conv3x3(len(mean), 64)  # 3x3 stride 1 and no max-pool: 32x32 inputs
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = layer(TorchvisionBlock, 64, 64, blocks1, stride=1)
        self.layer2 = layer(TorchvisionBlock, 64, 128, blocks2, stride=2)
        self.layer3 = layer(TorchvisionBlock, 128, 256, blocks3, stride=2)
        self.layer4 = layer(TorchvisionBlock, 256, 512, blocks4, stride=2)
        self.fc = nn.Linear(512, num_classes)
        init_like_reference(self)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        return pooled_logits(self.fc, self.layer4(self.layer3(self.layer2(self.layer1(out)))))
