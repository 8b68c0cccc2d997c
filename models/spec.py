"""ModelSpec: everything the pipeline needs to know about one reference model, and the registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from edge.registry import Registry

# Parity budgets per precision; a ModelSpec may tighten or loosen any of them.
#   max_abs / min_cosine: float artifacts (fp32, fp16) against the PyTorch fp32 reference.
#   min_top1_agreement / min_top5_overlap / min_cosine: int8 artifacts against fp32.
#   max_top1_drop: int8 top-1 drop in percentage points, when labelled data is given (--eval).
DEFAULT_BUDGETS: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-3, "min_cosine": 0.99999},
    "fp16": {"max_abs": 5e-2, "min_cosine": 0.999},
    # Top-1 agreement on a few unlabelled samples is coarse (inputs near a decision boundary flip
    # on any perturbation): EfficientNet-Lite0, calibrated on the built-in photos, agrees on 14-16
    # of 18 held-out crops at a cosine of 0.99. The accuracy criterion proper is the top-1 drop,
    # measured when labelled data is given (--eval).
    "int8": {"min_top1_agreement": 0.70, "min_top5_overlap": 0.70, "min_cosine": 0.95,
             "max_top1_drop": 1.0},
}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input. mean/std are on the 0-255 pixel scale:
    x = (pixel - mean) / std, per channel, RGB order."""

    resize: int  # shorter side, bilinear
    crop: int  # centre crop, square
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"

    def __post_init__(self):
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not {self.layout!r}")

    def at(self, size: int) -> "Preprocess":
        """The same preprocessing at another input size (resize keeps its ratio to crop)."""
        return Preprocess(round(size * self.resize / self.crop), size, self.mean, self.std, self.layout)


IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@dataclass(frozen=True)
class Weights:
    """Where a model's pretrained weights come from.

    `locate()` returns a local file path, or None when the weights are not on this machine.
    `fetch()` may download (it fails cleanly offline). `load(path)` returns a state dict."""

    name: str  # "imagenet"
    description: str
    locate: Callable[[], str | None]
    fetch: Callable[[], str] | None = None
    transform_state_dict: Callable[[dict], dict] | None = None
    top1: float | None = None  # published ImageNet top-1, for information


@dataclass(frozen=True)
class ModelSpec:
    """One registered model. `build(input_size=...)` returns an nn.Module in eval mode with
    random weights; the pipeline loads weights separately."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    input_size: int  # default square input side
    preprocess: Preprocess
    num_classes: int = 1000
    weights: Weights | None = None
    min_input_size: int = 32  # smallest input the architecture accepts (for fast tests)
    budgets: dict[str, dict[str, float]] = field(default_factory=dict)
    description: str = ""

    def build(self, input_size: int | None = None) -> nn.Module:
        model = self.builder(input_size=input_size or self.input_size, num_classes=self.num_classes)
        return model.eval()

    def budget(self, precision: str) -> dict[str, float]:
        return {**DEFAULT_BUDGETS[precision], **self.budgets.get(precision, {})}

    def input_shape(self, input_size: int | None = None) -> tuple[int, int, int, int]:
        s = input_size or self.input_size
        return (1, 3, s, s)


MODELS: Registry[ModelSpec] = Registry("model", "edge models")


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)
