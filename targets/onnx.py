"""ONNX, run by onnxruntime: fp32, and int8 as a QDQ graph (static input shape, batch 1)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edge.errors import ConversionError, UserError, require
from edge.runner import run_batch1
from edge.targets.base import ExportContext, Exported, TensorSpec, check_common, pkg_version, register_target


class OrtRunner:
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, disabled_optimizers: tuple[str, ...] = ()):
        ort = require("onnxruntime", "running ONNX artifacts", extra="onnx")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=list(disabled_optimizers))
        except Exception as e:
            raise UserError(f"{path} is not a loadable ONNX model: {str(e).splitlines()[0][:160]}") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return run_batch1(lambda b: self.session.run(None, {self.input_name: b})[0], x)


class Onnx:
    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "int8")
    runtime = "onnxruntime"
    runner_backend = "onnx"  # edge/device/runner.py --backend
    float_fallback = True  # int8 layers can stay in float (--max-drop)
    unsupported = {
        "fp16": "onnxruntime's CPU provider runs fp16 graphs by casting back to fp32; use fp32 or int8",
        "io-int8": "the QDQ graph takes and returns float tensors; use --target tflite for int8 I/O",
    }

    def calib_methods(self) -> tuple[str, ...]:
        from edge.quantize.onnx_ptq import DEFAULT_METHOD, METHODS

        return (DEFAULT_METHOD, *(m for m in METHODS if m != DEFAULT_METHOD))

    def check(self, precision: str, io: str, calib_method: str | None = None) -> None:
        check_common(self, precision, io, calib_method)
        require("onnxruntime", "the onnx target", extra="onnx")

    def export(self, ctx: ExportContext, precision: str, out: Path) -> Exported:
        onnx = require("onnx", "the onnx target", extra="onnx")
        fp32 = ctx.onnx_fp32()
        details: dict = {"opset": ctx.opset, "exporter": "torch.onnx (TorchScript-based, static shapes)"}
        if precision == "int8":
            from edge.quantize.onnx_ptq import DEFAULT_METHOD, quantize_onnx

            known = ()
            if ctx.qat is not None:  # carry the activation ranges learned in QAT
                from edge.quantize.qat import learned_ranges

                known = learned_ranges(ctx.qat, ctx.calib[0])
            details["quantization"] = quantize_onnx(fp32, out, ctx.calib, method=ctx.calib_method or DEFAULT_METHOD,
                                                    known_ranges=known, nodes_to_exclude=ctx.keep_float)
        else:
            shutil.copyfile(fp32, out)
        try:
            graph = onnx.load(str(out), load_external_data=False).graph
        except Exception as e:
            raise ConversionError(f"the exported ONNX file does not load: {e}") from e
        return Exported(out, _spec(graph.input[0], "NCHW"), _spec(graph.output[0]), details)

    def load(self, path: Path, manifest: dict | None = None) -> OrtRunner:
        return OrtRunner(path, disabled_optimizers=disabled_optimizers(manifest))

    def versions(self) -> dict[str, str | None]:
        return {"onnx": pkg_version("onnx"), "onnxruntime": pkg_version("onnxruntime")}


def disabled_optimizers(manifest: dict | None) -> tuple[str, ...]:
    """Session optimizers an artifact must run without (layers kept in float need onnxruntime's
    WeightBiasQuantization pass off, or it re-quantizes their weights); from its manifest."""
    q = ((manifest or {}).get("target_details") or {}).get("quantization") or {}
    return tuple(q.get("session_disabled_optimizers") or ())


def _spec(value_info, layout: str | None = None) -> TensorSpec:
    dims = tuple(d.dim_value for d in value_info.type.tensor_type.shape.dim)
    return TensorSpec(value_info.name, dims, "float32", layout)


register_target(Onnx())
