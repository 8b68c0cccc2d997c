"""A tiny convolutional network for fast tests: conv-bn-relu, depthwise, residual, pooling and
a linear head, the op mix of the reference models in a few thousand parameters."""
from __future__ import annotations

import torch
import torch.nn as nn

from edge.models.spec import IMAGENET, Preprocess, image_classifier, register_model


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = self.down(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def build_tiny(*, input_shape: tuple[int, ...] = (1, 3, 32, 32), num_classes: int = 10) -> nn.Module:
    return TinyNet(num_classes=num_classes)


register_model(image_classifier(
    name="tiny", family="test", builder=build_tiny, input_size=32, num_classes=10,
    preprocess=Preprocess(resize=36, crop=32, **IMAGENET), min_input_size=16,
    description="a few-thousand-parameter CNN for fast tests (random weights)",
))
