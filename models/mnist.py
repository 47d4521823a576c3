from torch import nn

from .normalize import Normalize


class MnistNet(nn.Module):
    """The 4-conv MNIST network of Madry et al. / the ALP reference: conv32-conv32-pool-conv64-conv64-pool,
    fc200-dropout-fc200-fc10. The last layer starts at zero, as in the reference, so training begins from
    uniform predictions."""

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )  # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 200), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(200, 200), nn.ReLU(inplace=True),
            nn.Linear(200, num_classes),
        )
        nn.init.zeros_(self.classifier[-1].weight)
        nn.init.zeros_(self.classifier[-1].bias)

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))
