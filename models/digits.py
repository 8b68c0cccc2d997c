"""A small CNN for scikit-learn's bundled 8x8 handwritten digits (1,797 images of 10 classes):
the model whose real accuracy the tests measure on every target, offline. The tests train it in
seconds on part of the digits and check fp32 and int8 accuracy on the held-back rest; it has no
weights of its own (`--weights random` or a trained state dict).

Input: the 8x8 grey image as scikit-learn gives it (values 0-16), divided by 16, in NCHW."""
from __future__ import annotations

import torch
import torch.nn as nn

from edge.models.spec import ModelSpec, register_model
from edge.tensors import InputSpec, OutputSpec, Range


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(pixels)), 1))


def build_digits_cnn(*, input_shape: tuple[int, ...] = (1, 1, 8, 8), num_classes: int = 10) -> nn.Module:
    return DigitsCNN(num_classes)


def load_digits(seed: int = 0, train_fraction: float = 0.7):
    """scikit-learn's digits as (x_train, y_train, x_test, y_test): x (N, 1, 8, 8) float32 in [0, 1],
    a fixed stratified split (no download: the data ship with scikit-learn)."""
    import numpy as np
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, train_size=train_fraction, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


register_model(ModelSpec(
    name="digits_cnn", family="digits", builder=build_digits_cnn,
    inputs=(InputSpec("pixels", (1, 1, 8, 8), "float32", "NCHW", Range(0.0, 1.0)),),
    outputs=(OutputSpec("logits", "classification", (1, 10)),),
    num_classes=10, min_input_size=8, resizable=False, labels=lambda: [str(i) for i in range(10)],
    description="a small CNN for scikit-learn's 8x8 digits (trained by the tests, real accuracy)",
))
