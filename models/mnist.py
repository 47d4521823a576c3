from torch import nn

from .normalize import Normalize


class MnistNet(nn.Module):
    """The 4-conv MNIST network of Madry et al. as the ALP reference builds it (its key names: `conv.0`,
    `conv.2`, `conv.5`, `conv.7`, `dense.0`, `dense.3`, `fc`): conv32-conv32-pool-conv64-conv64-pool,
    fc200-dropout-fc200, fc10. The last layer starts at zero, as in the reference, so training begins from
    uniform predictions."""

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )  # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4
        self.dense = nn.Sequential(
            nn.Linear(64 * 4 * 4, 200), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(200, 200),
        )
        self.fc = nn.Linear(200, num_classes)
        # The reference's init; the dense layers keep PyTorch's default.
        for m in self.conv:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        features = self.dense(self.conv(self.normalize(x)).flatten(1))
        return self.fc(nn.functional.relu(features))
