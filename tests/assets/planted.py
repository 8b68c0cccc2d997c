"""A small CNN for `edge explain` and `--max-drop` tests: four conv blocks whose names say where
they are (block1..block4), so a test can plant a bad layer and check that edge names it."""
import torch.nn as nn


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Planted(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.block1 = block(3, 16, 2)
        self.block2 = block(16, 16)
        self.block3 = block(16, 32, 2)
        self.block4 = block(32, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(self.pool(x).flatten(1))


def build(*, input_size: int = 32, num_classes: int = 10) -> nn.Module:
    return Planted(num_classes)
