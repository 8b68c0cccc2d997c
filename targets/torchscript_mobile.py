"""TorchScript for PyTorch's mobile lite interpreter (.ptl). int8 uses quantized kernels for
the qnnpack engine, the one ARM phones and boards run.

`optimize_for_mobile` is not applied: it needs XNNPACK, which this torch build lacks, and the
lite interpreter runs the traced module without it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge.errors import ConversionError
from edge.runner import run_batch1
from edge.targets.base import ExportContext, Exported, TensorSpec, check_common, pkg_version, register_target


class LiteRunner:
    runtime = "lite-interpreter"

    def __init__(self, path: Path, quantized: bool):
        from torch.jit.mobile import _load_for_lite_interpreter

        if quantized:  # the engine int8 artifacts were built for; a process-wide torch setting
            torch.backends.quantized.engine = "qnnpack"
        self.module = _load_for_lite_interpreter(str(path))

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        return run_batch1(lambda b: self.module(torch.from_numpy(np.ascontiguousarray(b))).numpy(), x)


class TorchScriptMobile:
    name = "torchscript-mobile"
    suffix = ".ptl"
    precisions = ("fp32", "int8")
    runtime = "torch lite interpreter"
    runner_backend = "ptl"  # edge/device/runner.py --backend
    unsupported = {
        "fp16": "the mobile CPU interpreter has no fp16 kernels; use fp32 or int8",
        "io-int8": "quantized models take and return float tensors in the lite interpreter",
    }

    def calib_methods(self) -> tuple[str, ...]:
        from edge.quantize.torch_ptq import DEFAULT_METHOD, METHODS

        return (DEFAULT_METHOD, *(m for m in METHODS if m != DEFAULT_METHOD))

    def check(self, precision: str, io: str, calib_method: str | None = None) -> None:
        check_common(self, precision, io, calib_method)

    def export(self, ctx: ExportContext, precision: str, out: Path) -> Exported:
        example = torch.zeros(ctx.input_shape)
        details: dict = {"format": "torchscript lite interpreter (bytecode)"}
        try:
            if precision == "int8" and ctx.qat is not None:  # keep the ranges learned in training
                from edge.quantize.qat import to_lite

                traced, details["quantization"] = to_lite(ctx.qat.prepared, example)
            elif precision == "int8":
                from edge.quantize.torch_ptq import DEFAULT_METHOD, quantize_torch

                traced, qinfo = quantize_torch(ctx.model, example, ctx.calib,
                                               method=ctx.calib_method or DEFAULT_METHOD)
                details["quantization"] = qinfo
            else:
                with torch.no_grad():
                    traced = torch.jit.trace(ctx.model, example)
            traced._save_for_lite_interpreter(str(out))
        except ConversionError:
            raise
        except Exception as e:
            raise ConversionError(f"TorchScript export failed: {e.__class__.__name__}: {_first(e)}") from e
        with torch.no_grad():
            n_out = tuple(ctx.model(example).shape)
        return Exported(out, TensorSpec("input", tuple(ctx.input_shape), layout="NCHW"),
                        TensorSpec("output", n_out), details)

    def load(self, path: Path, manifest: dict | None = None) -> LiteRunner:
        quantized = bool(manifest and manifest.get("precision") == "int8")
        return LiteRunner(path, quantized)

    def versions(self) -> dict[str, str | None]:
        return {"torch": torch.__version__}


def _first(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else ""


register_target(TorchScriptMobile())
