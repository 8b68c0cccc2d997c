"""The target base class and registry. A target is one file: it exports a model at a precision to
an artifact (asking its quantizer, edge.quantize, for int8), loads an artifact into a Runner, and
says what it needs installed, what it cannot build and why, and what it knows about its format
(per-layer outputs for `edge explain`, the on-device runner's backend). Nothing outside a
target's own file branches on its name or its file suffix.

This module imports no torch: listing targets and `edge --help` stay fast."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge.registry import Registry
from edge.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np

    from edge.data import Samples
    from edge.models.spec import ModelSpec
    from edge.quantize.qat import QATResult

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Exported:
    """What an export produced: the artifact, its inputs and outputs as the runtime declares them
    (tied to the model's), and target-specific facts for the manifest."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    details: dict = field(default_factory=dict)

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]


@dataclass
class ExportContext:
    """Everything an exporter may use; shared by all targets of one build so that the ONNX
    export and the calibration set are made once."""

    model: "object"  # the fp32 nn.Module, eval mode
    spec: "ModelSpec"  # its inputs and outputs (names, shapes, dtypes, layouts, tasks)
    workdir: Path
    example: "dict[str, np.ndarray]"  # one real sample per input (batch 1), for tracing
    calib: "Samples | None" = None  # int8 only
    calib_method: str | None = None  # None: the quantizer's own default
    io: str = "float"  # "float" or "int8": the artifact's input/output type, where a target supports it
    opset: int = 17
    keep_float: tuple[str, ...] = ()  # int8: layers (ONNX node names) an accuracy budget keeps in float
    # int8 with --qat: the edge.quantize.qat.QATResult (the trained fake-quant model, its learned
    # ranges); `model` is then its fine-tuned float network, BN folded, weights on their int8 levels
    qat: "QATResult | None" = None
    _onnx: Path | None = None

    def example_tensors(self) -> tuple:
        import torch

        return tuple(torch.from_numpy(self.example[i.name]) for i in self.spec.inputs)

    def model_inputs(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, i.shape, i.dtype, i.layout, i.shape, i.layout) for i in self.spec.inputs]

    def model_outputs(self) -> list[TensorSpec]:
        return [TensorSpec(o.name, o.shape, "float32", o.layout, o.shape, o.layout) for o in self.spec.outputs]

    def onnx_fp32(self) -> Path:
        """The model exported once to ONNX (static shapes, batch 1) and shared by every target."""
        if self._onnx is None:
            from edge.targets.onnx import export_onnx

            self._onnx = export_onnx(self, self.workdir / "model.fp32.onnx")
        return self._onnx


class Target:
    """Base of every target; a subclass sets the attributes and implements export and load."""

    name: str
    suffix: str  # artifact file extension, with the dot
    precisions: tuple[str, ...]
    runtime: str  # what runs the artifact
    runner_backend: str  # the on-device runner's backend for this format (edge/device/runner.py)
    quantizer: str | None = None  # the edge.quantize quantizer int8 artifacts are made with
    # (module, pip package) pairs the target needs, and the pyproject extra that installs them
    requires: tuple[tuple[str, str], ...] = ()
    extra: str | None = None
    unsupported: dict[str, str] = {}  # precision or option -> why not
    # int8: the target honours ExportContext.keep_float (the --max-drop fallback)
    float_fallback: bool = False

    def missing(self) -> list[str]:
        """The packages the target needs that are not installed."""
        return [pkg for module, pkg in self.requires if importlib.util.find_spec(module) is None]

    def available(self) -> str | None:
        """Why this target cannot run here (None: it can)."""
        missing = self.missing()
        if not missing:
            return None
        how = f"pip install 'edge[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
        return f"needs {', '.join(missing)}, not installed; install with: {how}"

    def get_quantizer(self):
        from edge.quantize import QUANTIZERS

        return QUANTIZERS.get(self.quantizer)

    def calib_methods(self) -> tuple[str, ...]:
        """int8 calibration methods this target's quantizer offers; the first is its default."""
        return self.get_quantizer().methods if self.quantizer else ()

    def check(self, precision: str, io: str, calib_method: str | None = None) -> None:
        """Raise UserError for a combination this target cannot build."""
        from edge.errors import UserError

        if precision not in self.precisions:
            why = self.unsupported.get(precision, "not implemented")
            raise UserError(f"target {self.name} cannot build {precision}: {why}; "
                            f"choose one of {', '.join(self.precisions)}")
        if io != "float" and not (precision == "int8" and "io-int8" not in self.unsupported):
            why = self.unsupported.get("io-int8", "integer input/output needs --int8")
            raise UserError(f"--io {io} is not possible for {self.name} {precision}: {why}; use --io float")
        if calib_method is not None and calib_method not in self.calib_methods():
            raise UserError(f"--calib-method {calib_method} is not available for {self.name}; "
                            f"choose one of {', '.join(self.calib_methods())}")
        why = self.available()
        if why:
            raise UserError(f"target {self.name} {why}")

    def supports(self, spec: "ModelSpec", precision: str) -> str | None:
        """Why this target cannot build this model at this precision (None: it can)."""
        return None

    def quantize(self, ctx: ExportContext):
        """int8: prepare and calibrate with this target's quantizer, at the point its quantizer
        applies (the module, the exported graph, the converter's settings); returns what export
        converts."""
        raise NotImplementedError

    def export(self, ctx: ExportContext, precision: str, out: Path, prepared=None) -> Exported:
        """Write the artifact to `out`: the fp32 model as it is, fp16 weights, or the int8 model
        converted from what quantize prepared."""
        raise NotImplementedError

    def load(self, path: Path, manifest: dict | None = None):
        """A Runner for an artifact; `manifest` gives its inputs and outputs."""
        raise NotImplementedError

    def versions(self) -> dict[str, str | None]:
        return {}

    def finish(self, exported: Exported, spec: "ModelSpec", labels: Path | None) -> dict | None:
        """Last touches to a checked artifact before it is published, for the manifest's
        target_details (TFLite embeds its metadata). They must not change its outputs."""
        return None

    def delegation(self, exported: Exported) -> dict | None:
        """How the runtime places the artifact's graph on its optimised kernels, as read from the
        runtime itself (TFLite: the XNNPACK partitions and the ops left outside them; ONNX Runtime:
        the nodes of its optimised graph and those left in float between Q/DQ pairs), with
        "split": the ops that keep it from running whole on them ({} when none). None where the
        runtime does not say."""
        return None

    def layer_outputs(self, path: Path, model, x, manifest: dict | None = None):
        """Per-layer comparison with PyTorch for `edge explain` and --max-drop (edge.quantize.
        sensitivity.Layer list), or None where the runtime exposes no intermediate tensors."""
        return None


TARGETS: Registry[Target] = Registry("target", "--target")


def register_target(target: Target) -> Target:
    return TARGETS.add(target.name, target)


def target_of(path: Path, manifest: dict | None = None) -> Target | None:
    """The target an artifact belongs to: its manifest's, else the one whose files end like it."""
    if manifest and manifest.get("target") in TARGETS:
        return TARGETS.get(manifest["target"])
    return next((t for t in TARGETS if t.suffix == Path(path).suffix), None)


def pkg_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def io_specs(manifest: dict | None, key: str) -> list[TensorSpec] | None:
    """The manifest's `inputs` / `outputs` as TensorSpecs; schema-1 manifests give the single
    `input` / `output` (an NHWC input of a model that takes NCHW)."""
    if not manifest:
        return None
    if isinstance(manifest.get(key), list):
        return [TensorSpec.from_json(d) for d in manifest[key]]
    one = manifest.get(key.removesuffix("s"))
    if not isinstance(one, dict):
        return None
    layout = one.get("layout")
    shape = tuple(one["shape"])
    model_shape = (shape[0], shape[3], shape[1], shape[2]) if layout == "NHWC" and len(shape) == 4 else shape
    return [TensorSpec(one.get("name", key), shape, one.get("dtype", "float32"), layout, model_shape,
                       "NCHW" if layout else None, one.get("scale"), one.get("zero_point"), one.get("name"))]
