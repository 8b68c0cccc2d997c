"""Keyword spotting: TC-ResNet8 (Choi et al., 2019), temporal convolutions over MFCC features laid
out as channels: input (N, 40 coefficients, 98 frames), layout NCL (1 s of 16 kHz audio, 10 ms
hop), 12 classes (Speech Commands' ten words, silence, unknown). No offline weights: random
weights (batch-norm statistics re-estimated on samples drawn from the input's range)."""
from __future__ import annotations

import torch
import torch.nn as nn

from edge.models.spec import ModelSpec, register_model
from edge.tensors import InputSpec, OutputSpec, Range

KEYWORDS = ("silence", "unknown", "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 9, stride, 4, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(cout, cout, 9, 1, 4, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1, stride, bias=False), nn.BatchNorm1d(cout), nn.ReLU())
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class TCResNet8(nn.Module):
    def __init__(self, mfcc: int = 40, num_classes: int = 12, width: float = 1.0):
        super().__init__()
        c = [int(round(k * width)) for k in (16, 24, 32, 48)]
        self.stem = nn.Conv1d(mfcc, c[0], 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(Block(c[0], c[1], 2), Block(c[1], c[2], 2), Block(c[2], c[3], 2))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(c[3], num_classes)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(mfcc))), 1))


def build_tc_resnet8(*, input_shape: tuple[int, ...] = (1, 40, 98), num_classes: int = 12) -> nn.Module:
    return TCResNet8(input_shape[1], num_classes)


register_model(ModelSpec(
    name="tc_resnet8_kws", family="audio", builder=build_tc_resnet8,
    inputs=(InputSpec("mfcc", (1, 40, 98), "float32", "NCL", Range(-3.0, 3.0)),),
    outputs=(OutputSpec("logits", "classification", (1, 12)),),
    num_classes=12, min_input_size=1, resizable=False, labels=lambda: list(KEYWORDS),
    description="TC-ResNet8 keyword spotter on 40x98 MFCC (NCL), 12 classes (random weights)",
))
