"""ResNet-18 for CIFAR-10 (He et al., 2016, as in the seed design's benchmark table): a 3x3 stem
with stride 1 and no max-pool, so that 32x32 images keep their detail; four stages of two basic
blocks (64, 128, 256, 512 channels); 10 classes. No offline weights exist for it here: random
weights (batch-norm statistics re-estimated on the built-in photos), so its accuracy is not
measurable, its size, speed and conversion are."""
from __future__ import annotations

import torch
import torch.nn as nn

from edge.models.spec import Preprocess, image_classifier, register_model

CIFAR10 = dict(mean=(125.307, 122.961, 113.8575), std=(62.9932, 62.0887, 66.7048))
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def build_resnet18_cifar(*, input_shape: tuple[int, ...] = (1, 3, 32, 32), num_classes: int = 10) -> nn.Module:
    return ResNet18Cifar(num_classes)


register_model(image_classifier(
    name="resnet18_cifar", family="cifar", builder=build_resnet18_cifar, input_size=32, num_classes=10,
    preprocess=Preprocess(resize=32, crop=32, **CIFAR10), min_input_size=16, labels=lambda: list(CIFAR10_LABELS),
    description="ResNet-18 for CIFAR-10: 3x3 stem, no max-pool, 32x32 (random weights)",
))
