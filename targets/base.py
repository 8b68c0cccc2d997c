"""The target protocol and registry. A target is one file: it exports a model at a precision
to an artifact and loads an artifact into a Runner. Nothing outside a target's own file
branches on its name."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn as nn

from edge.registry import Registry

if TYPE_CHECKING:
    from edge.quantize.qat import QATResult

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact, as the manifest records it."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str | None = None  # inputs only: "NCHW" / "NHWC"
    scale: float | None = None  # quantized I/O only
    zero_point: int | None = None

    def to_json(self, mean=None, std=None) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout is not None:
            d.update(layout=self.layout, mean=list(mean) if mean is not None else None,
                     std=list(std) if std is not None else None)
        d.update(scale=self.scale, zero_point=self.zero_point)
        return d


@dataclass
class Exported:
    """What an export produced: the artifact, its I/O, and target-specific facts for the manifest."""

    path: Path
    input: TensorSpec
    output: TensorSpec
    details: dict = field(default_factory=dict)


@dataclass
class ExportContext:
    """Everything an exporter may use; shared by all targets of one build so that the ONNX
    export and the calibration set are made once."""

    model: nn.Module  # fp32, eval mode
    input_shape: tuple[int, int, int, int]
    workdir: Path
    calib: "np.ndarray | None" = None  # (N, C, H, W) float32, only for int8
    calib_method: str | None = None  # None: the target's own default
    io: str = "float"  # "float" or "int8": the artifact's input/output type, where a target supports it
    opset: int = 17
    keep_float: tuple[str, ...] = ()  # int8: layers (ONNX node names) an accuracy budget keeps in float
    # int8 with --qat: the edge.quantize.qat.QATResult (the trained fake-quant model, its learned
    # ranges); `model` is then its fine-tuned float network, BN folded, weights on their int8 levels
    qat: "QATResult | None" = None
    _onnx: Path | None = None

    def onnx_fp32(self) -> Path:
        """The model exported once to ONNX (static shape, batch 1) and shared by every target."""
        if self._onnx is None:
            from edge.errors import ConversionError

            path = self.workdir / "model.fp32.onnx"
            try:
                torch.onnx.export(self.model, (torch.zeros(self.input_shape),), str(path), dynamo=False,
                                  input_names=["input"], output_names=["output"], opset_version=self.opset)
            except Exception as e:
                raise ConversionError(f"torch.onnx.export failed: {e.__class__.__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}") from e
            _simplify(path)
            self._onnx = path
        return self._onnx


def _simplify(path: Path) -> None:
    """Constant-fold the exported graph with onnxsim. The TorchScript exporter writes each
    ZeroPad2d as a Pad fed by a Concat/Slice/Transpose subgraph; folded, the pads merge into
    the Conv, which onnx2tf then converts correctly (unfolded, it pads the batch axis) and
    which quantizes as one op."""
    from edge.errors import ConversionError, require

    onnx = require("onnx", "ONNX export", extra="onnx")
    onnxsim = require("onnxsim", "ONNX graph simplification", extra="onnx")
    try:
        model, ok = onnxsim.simplify(onnx.load(str(path)))
    except Exception as e:
        raise ConversionError(f"onnxsim could not simplify the exported graph: {str(e).splitlines()[0][:160]}") from e
    if not ok:
        raise ConversionError("onnxsim's simplified graph does not match the exported one")
    onnx.save(model, str(path))


class Target(Protocol):
    name: str
    suffix: str  # artifact file extension, with the dot
    precisions: tuple[str, ...]
    runtime: str  # what runs the artifact
    unsupported: dict[str, str]  # precision or option -> why not
    # int8: the target honours ExportContext.keep_float (the --max-drop fallback); class default False
    float_fallback: bool = False

    def calib_methods(self) -> tuple[str, ...]:
        """int8 calibration methods this target offers; the first is its default."""

    def check(self, precision: str, io: str, calib_method: str | None = None) -> None:
        """Raise UserError for a combination this target cannot build."""

    def export(self, ctx: ExportContext, precision: str, out: Path) -> Exported: ...

    def load(self, path: Path, manifest: dict | None = None):
        """A Runner for an artifact; `manifest` gives its I/O quantization and layout."""

    def versions(self) -> dict[str, str | None]: ...


TARGETS: Registry[Target] = Registry("target", "--target")


def register_target(target: Target) -> Target:
    return TARGETS.add(target.name, target)


def pkg_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_common(target: Target, precision: str, io: str, calib_method: str | None = None) -> None:
    from edge.errors import UserError

    if precision not in target.precisions:
        why = target.unsupported.get(precision, "not implemented")
        raise UserError(f"target {target.name} cannot build {precision}: {why}; "
                        f"choose one of {', '.join(target.precisions)}")
    if io != "float" and not (precision == "int8" and "io-int8" not in target.unsupported):
        why = target.unsupported.get("io-int8", "integer input/output needs --int8")
        raise UserError(f"--io {io} is not possible for {target.name} {precision}: {why}; use --io float")
    if calib_method is not None and calib_method not in target.calib_methods():
        raise UserError(f"--calib-method {calib_method} is not available for {target.name}; "
                        f"choose one of {', '.join(target.calib_methods())}")
