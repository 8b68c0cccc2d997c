"""TorchScript for PyTorch's mobile lite interpreter (.ptl). int8 comes from the fx-qnnpack
quantizer (quantized kernels for the qnnpack engine, the one ARM phones and boards run).

`optimize_for_mobile` is not applied: it needs XNNPACK, which this torch build lacks, and the
lite interpreter runs the traced module without it. The lite interpreter is no longer developed
upstream (ExecuTorch is PyTorch's on-device runtime now); it remains for existing apps."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import ConversionError
from edge.runner import Runner
from edge.targets.base import ExportContext, Exported, Target, io_specs, register_target


class LiteRunner(Runner):
    runtime = "lite-interpreter"

    def __init__(self, path: Path, quantized: bool, inputs, outputs, threads: int | None = None):
        import torch
        from torch.jit.mobile import _load_for_lite_interpreter

        if quantized:  # the engine int8 artifacts were built for; a process-wide torch setting
            torch.backends.quantized.engine = "qnnpack"
        if threads:
            torch.set_num_threads(threads)
        self.module = _load_for_lite_interpreter(str(path))
        super().__init__(inputs, outputs)

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        from edge.models.loading import output_list

        with torch.no_grad():
            y = self.module(*[torch.from_numpy(feeds[t.name]) for t in self.inputs])
        return [t.numpy() for t in output_list(y)]


class TorchScriptMobile(Target):
    name = "torchscript-mobile"
    suffix = ".ptl"
    precisions = ("fp32", "int8")
    runtime = "torch lite interpreter"
    runner_backend = "ptl"
    quantizer = "fx-qnnpack"
    unsupported = {
        "fp16": "the mobile CPU interpreter has no fp16 kernels; use fp32 or int8",
        "io-int8": "quantized models take and return float tensors in the lite interpreter",
    }

    def quantize(self, ctx: ExportContext):
        """int8: observers on the module, calibrated; with QAT, the trained fake-quant model as it is."""
        from edge.quantize.torch_ptq import FxPrepared

        if ctx.qat is not None:  # the same convert, on the ranges learned in training
            return FxPrepared(ctx.qat.prepared, "qat", qat=True)
        q = self.get_quantizer()
        prepared = q.prepare(ctx.model, ctx.example_tensors(), ctx.calib_method)
        q.calibrate(prepared, ctx.calib)
        return prepared

    def export(self, ctx: ExportContext, precision: str, out: Path, prepared=None) -> Exported:
        import torch

        example = ctx.example_tensors()
        details: dict = {"format": "torchscript lite interpreter (bytecode)"}
        try:
            if precision == "int8":
                traced, details["quantization"] = self.get_quantizer().convert(prepared, example)
            else:
                with torch.no_grad():
                    traced = torch.jit.trace(ctx.model, example)
            # Serialised in memory and written by Python: torch's own file writer aborts the process
            # (a C++ exception it cannot pass on) when the disk fills up; this raises OSError.
            data = traced._save_to_buffer_for_lite_interpreter()
        except ConversionError:
            raise
        except Exception as e:
            raise ConversionError(f"TorchScript export failed: {e.__class__.__name__}: {_first(e)}") from e
        out.write_bytes(data)
        return Exported(out, ctx.model_inputs(), ctx.model_outputs(), details)

    def load(self, path: Path, manifest: dict | None = None, threads: int | None = None) -> LiteRunner:
        quantized = bool(manifest and manifest.get("precision") == "int8")
        inputs, outputs = io_specs(manifest, "inputs"), io_specs(manifest, "outputs")
        if inputs is None or outputs is None:
            raise ConversionError(f"{path}: a .ptl file does not declare its inputs; its manifest.json is needed")
        return LiteRunner(path, quantized, inputs, outputs, threads)

    def versions(self) -> dict[str, str | None]:
        from edge.targets.base import pkg_version

        return {"torch": pkg_version("torch")}


def _first(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else ""


register_target(TorchScriptMobile())
