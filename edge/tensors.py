"""Typed inputs and outputs.

`InputSpec` and `OutputSpec` describe a model's side of a tensor: name, shape (batch 1), dtype,
layout, and for an input how samples for it are made (its `source`), for an output which task
judges it. `TensorSpec` describes the artifact's side of the same tensor (the runtime's own
shape, dtype, layout, quantization and tensor name), as the manifest records it.

Layouts are strings of axis letters ("NCHW", "NHWC", "NCL", "NLC", "NL"); None means the axes
have no image or sequence meaning and are never transposed. An artifact whose layout differs
from the model's (TFLite takes NHWC) is fed through the permutation between the two.

This module imports no torch, so that listing models and targets stays fast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

DTYPES = ("float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float16")
# What judges an output. Classification logits: top-1 agreement, top-5 overlap, cosine (and the
# accuracy drop on labelled data). Every other task is a dense output, judged by cosine, SQNR in
# dB and the max-abs difference relative to the output's range.
TASKS = ("classification", "segmentation", "detection", "embedding", "regression", "dense")
DENSE_TASKS = tuple(t for t in TASKS if t != "classification")
# The most values one input sample may hold: 2**25 (128 MiB as float32), a 4K RGB image and ten
# times the largest registered model's input. A build holds about a hundred samples (calibration
# and check) and each runtime its own copies; a larger input exhausts memory long before it fails
# in a way that can be reported (the kernel kills the process).
MAX_INPUT_VALUES = 1 << 25


def check_size(shape, what: str) -> None:
    """UserError when one sample of an input of this shape holds more than MAX_INPUT_VALUES."""
    from edge.errors import UserError

    n = math.prod(int(d) for d in shape)
    if n > MAX_INPUT_VALUES:
        raise UserError(f"{what} {','.join(map(str, shape))} is {n:.3g} values per sample "
                        f"({n * 4 / 2**30:.3g} GiB as float32); edge takes inputs up to {MAX_INPUT_VALUES:,} values "
                        f"({MAX_INPUT_VALUES * 4 >> 20} MiB): is it the shape you meant?")


def judged_as(task: str) -> str:
    """The metric family of a task: "classification" or "dense"."""
    return "classification" if task == "classification" else "dense"


# ---------------------------------------------------------------- how samples are made

@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input. mean/std are on the 0-255 pixel scale:
    x = (pixel - mean) / std, per channel, RGB order. The image is resized (bilinear) so that it
    covers `resize` (the crop scaled by resize/crop on its shorter side), then centre-cropped."""

    resize: int  # the shorter side before cropping, for a square crop
    crop: int | tuple[int, int]  # centre crop: a side, or (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"

    def __post_init__(self):
        if min(self.crop_hw) > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not {self.layout!r}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        return (self.crop, self.crop) if isinstance(self.crop, int) else tuple(self.crop)

    @property
    def ratio(self) -> float:
        """resize / crop: how much larger than the crop the resized image is."""
        return self.resize / min(self.crop_hw)

    def resize_hw(self) -> tuple[int, int]:
        """The (height, width) the resized image must cover before the centre crop."""
        h, w = self.crop_hw
        return round(h * self.ratio), round(w * self.ratio)

    def at(self, size: int | tuple[int, int]) -> "Preprocess":
        """The same preprocessing at another input size (resize keeps its ratio to the crop)."""
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        crop = h if h == w else (h, w)
        return Preprocess(round(min(h, w) * self.ratio), crop, self.mean, self.std, self.layout)

    def to_json(self) -> dict:
        h, w = self.crop_hw
        return {"resize": self.resize, "crop": h if h == w else [h, w], "interpolation": "bilinear",
                "color": "RGB", "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class Image:
    """An RGB photo, preprocessed: calibrated and checked on images (--calib DIR, built-in photos)."""

    preprocess: Preprocess
    kind = "image"

    def to_json(self) -> dict:
        return {"kind": self.kind, **self.preprocess.to_json()}


@dataclass(frozen=True)
class Range:
    """Values drawn uniformly from [low, high) (features such as a log-mel spectrogram)."""

    low: float = -1.0
    high: float = 1.0
    kind = "range"

    def to_json(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Tokens:
    """Integer token ids in [0, vocab_size)."""

    vocab_size: int
    kind = "tokens"

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


@dataclass(frozen=True)
class Mask:
    """An attention mask: ones for the tokens, zeros for the padding after them."""

    kind = "mask"

    def to_json(self) -> dict:
        return {"kind": self.kind}


Source = Union[Image, Range, Tokens, Mask]


# ---------------------------------------------------------------- the model's side

def check_layout(layout: str | None, rank: int, what: str) -> None:
    if layout is None:
        return
    if len(layout) != rank or len(set(layout)) != rank or not layout.isalpha() or not layout.isupper():
        raise ValueError(f"{what}: layout {layout!r} does not fit a rank-{rank} tensor (one capital letter per axis)")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str | None = None
    source: Source = field(default_factory=Range)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f"input {self.name}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        check_layout(self.layout, len(self.shape), f"input {self.name}")
        if isinstance(self.source, (Tokens, Mask)) and self.dtype in FLOAT_DTYPES:
            raise ValueError(f"input {self.name}: {self.source.kind} samples need an integer dtype, not {self.dtype}")
        if isinstance(self.source, Image) and self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"input {self.name}: an image input must be float, not {self.dtype}")

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout,
                "source": self.source.to_json()}


@dataclass(frozen=True)
class OutputSpec:
    name: str
    task: str = "dense"
    shape: tuple[int, ...] | None = None  # filled from a forward pass when not declared
    layout: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"output {self.name}: task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def to_json(self) -> dict:
        return {"name": self.name, "task": self.task, "shape": list(self.shape) if self.shape else None,
                "layout": self.layout}


def default_layout(rank: int) -> str | None:
    """The layout a PyTorch tensor of this rank has when nothing else is said: channels first."""
    return {3: "NCL", 4: "NCHW", 5: "NCDHW"}.get(rank)


def channels_last(layout: str | None) -> str | None:
    """NCHW -> NHWC, NCL -> NLC: the layout a channels-last runtime gives the same tensor."""
    if layout is None or len(layout) < 3:
        return layout
    return layout[0] + layout[2:] + layout[1]


def permutation(src: str | None, dst: str | None) -> tuple[int, ...] | None:
    """Axes to transpose a `src`-laid-out array into `dst` (None: no transpose needed)."""
    if src is None or dst is None or src == dst:
        return None
    if sorted(src) != sorted(dst):
        raise ValueError(f"layouts {src} and {dst} do not have the same axes")
    return tuple(src.index(c) for c in dst)


# ---------------------------------------------------------------- the artifact's side

@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact as its runtime declares it, tied to the model's tensor."""

    name: str  # the model's name for it
    shape: tuple[int, ...]  # the artifact's shape
    dtype: str = "float32"
    layout: str | None = None  # the artifact's layout
    model_shape: tuple[int, ...] | None = None
    model_layout: str | None = None
    scale: float | None = None  # quantized I/O only
    zero_point: int | None = None
    tensor: str | None = None  # the tensor's name inside the artifact (None: by position)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout,
                "model_shape": list(self.model_shape or self.shape), "model_layout": self.model_layout,
                "scale": self.scale, "zero_point": self.zero_point, "tensor": self.tensor}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"), d.get("layout"),
                   tuple(d.get("model_shape") or d["shape"]), d.get("model_layout"), d.get("scale"),
                   d.get("zero_point"), d.get("tensor"))

    def to_model(self) -> tuple[int, ...] | None:
        """Axes that take an artifact-layout array to the model's layout."""
        return permutation(self.layout, self.model_layout)

    def from_model(self) -> tuple[int, ...] | None:
        return permutation(self.model_layout, self.layout)
