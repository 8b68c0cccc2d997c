"""ONNX, run by onnxruntime: fp32, and int8 as a QDQ graph (static shapes, batch 1). The fp32
export here is also where TFLite starts (onnx2tf)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edge.errors import ConversionError, UserError, require, write_failure
from edge.runner import Runner
from edge.targets.base import ExportContext, Exported, Target, io_specs, pkg_version, register_target
from edge.tensors import TensorSpec

ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def export_onnx(ctx: ExportContext, path: Path) -> Path:
    """torch.onnx.export (the TorchScript-based exporter, static shapes, batch 1), named inputs and
    outputs, then constant-folded by onnxsim."""
    import torch

    try:
        torch.onnx.export(ctx.model, ctx.example_tensors(), str(path), dynamo=False,
                          input_names=[i.name for i in ctx.spec.inputs],
                          output_names=[o.name for o in ctx.spec.outputs], opset_version=ctx.opset)
    except Exception as e:
        if write_failure(e):
            raise
        raise ConversionError(f"torch.onnx.export failed: {e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    _simplify(path)
    return path


def _simplify(path: Path) -> None:
    """Constant-fold the exported graph with onnxsim. The TorchScript exporter writes each
    ZeroPad2d as a Pad fed by a Concat/Slice/Transpose subgraph; folded, the pads merge into
    the Conv, which onnx2tf then converts correctly (unfolded, it pads the batch axis) and
    which quantizes as one op."""
    onnx = require("onnx", "ONNX export", extra="onnx")
    onnxsim = require("onnxsim", "ONNX graph simplification", extra="onnx")
    try:
        model, ok = onnxsim.simplify(onnx.load(str(path)))
    except Exception as e:
        raise ConversionError(f"onnxsim could not simplify the exported graph: {str(e).splitlines()[0][:160]}") from e
    if not ok:
        raise ConversionError("onnxsim's simplified graph does not match the exported one")
    onnx.save(model, str(path))


class OrtRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path: Path, inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None,
                 threads: int | None = None, disabled_optimizers: tuple[str, ...] = ()):
        ort = require("onnxruntime", "running ONNX artifacts", extra="onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=list(disabled_optimizers))
        except Exception as e:
            raise UserError(f"{path} is not a loadable ONNX model: {str(e).splitlines()[0][:160]}") from None
        declared_in = [_declared(v) for v in self.session.get_inputs()]
        declared_out = [_declared(v) for v in self.session.get_outputs()]
        super().__init__(inputs or declared_in, outputs or declared_out)
        self._names = [t.tensor or t.name for t in self.outputs]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._names, {(t.tensor or t.name): feeds[t.name] for t in self.inputs})


def _declared(v) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else 1 for d in v.shape)
    return TensorSpec(v.name, shape, ORT_DTYPES.get(v.type, "float32"), None, shape, None, tensor=v.name)


class Onnx(Target):
    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "int8")
    runtime = "onnxruntime"
    runner_backend = "onnx"
    quantizer = "ort-static"
    requires = (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxsim", "onnxsim"))
    extra = "onnx"
    float_fallback = True  # int8 layers can stay in float (--max-drop)
    unsupported = {
        "fp16": "onnxruntime's CPU provider runs fp16 graphs by casting back to fp32; use fp32 or int8",
        "io-int8": "the QDQ graph takes and returns float tensors; use --target tflite for int8 I/O",
    }

    def quantize(self, ctx: ExportContext):
        """int8: the exported fp32 graph, BN folded and calibrated (ranges and input statistics)."""
        q = self.get_quantizer()
        folder = ctx.workdir / "ort-static"
        folder.mkdir(exist_ok=True)
        prepared = q.prepare(ctx.onnx_fp32(), folder)
        known = ()
        if ctx.qat is not None:  # carry the activation ranges learned in QAT
            from edge.quantize.qat import learned_ranges

            known = learned_ranges(ctx.qat, ctx.calib.arrays)
        q.calibrate(prepared, ctx.calib, ctx.calib_method, known)
        return prepared

    def export(self, ctx: ExportContext, precision: str, out: Path, prepared=None) -> Exported:
        import onnx

        fp32 = ctx.onnx_fp32()
        details: dict = {"opset": ctx.opset, "exporter": "torch.onnx (TorchScript-based, static shapes)"}
        if precision == "int8":
            details["quantization"] = self.get_quantizer().convert(prepared, out, nodes_to_exclude=ctx.keep_float)
        else:
            shutil.copyfile(fp32, out)
        try:
            graph = onnx.load(str(out), load_external_data=False).graph
        except Exception as e:
            raise ConversionError(f"the exported ONNX file does not load: {e}") from e
        ins = {v.name: v for v in graph.input}
        outs = {v.name: v for v in graph.output}
        return Exported(out, [_spec(ins[t.name], t) for t in ctx.model_inputs()],
                        [_spec(outs[t.name], t) for t in ctx.model_outputs()], details)

    def load(self, path: Path, manifest: dict | None = None, threads: int | None = None) -> OrtRunner:
        return OrtRunner(path, io_specs(manifest, "inputs"), io_specs(manifest, "outputs"), threads,
                         disabled_optimizers(manifest))

    def versions(self) -> dict[str, str | None]:
        return {"onnx": pkg_version("onnx"), "onnxruntime": pkg_version("onnxruntime")}

    def delegation(self, exported: Exported) -> dict:
        """onnxruntime's optimised graph (every optimisation on, as a session runs it), read back:
        its node types, and the nodes left in float between DequantizeLinear and QuantizeLinear
        in an int8 graph (QDQ pairs it could not fuse into an int8 kernel such as QLinearConv)."""
        import tempfile
        from collections import Counter

        import onnx

        ort = require("onnxruntime", "running ONNX artifacts", extra="onnx")
        q = exported.details.get("quantization") or {}
        with tempfile.TemporaryDirectory(prefix="edge-ort-") as tmp:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(str(exported.path), opts, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=list(q.get("session_disabled_optimizers") or ()))
            graph = onnx.load(opts.optimized_model_filepath).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        qdq = ("DequantizeLinear", "QuantizeLinear")
        in_float = Counter(n.op_type for n in graph.node if n.op_type not in qdq
                           and any(producer.get(i) == "DequantizeLinear" for i in n.input))
        kept = set(q.get("excluded_nodes") or ())
        why = ("kept in float by request (--max-drop)" if kept else
               "no int8 kernel fused for it: it runs in float between DequantizeLinear and QuantizeLinear")
        return {"runtime": f"onnxruntime {pkg_version('onnxruntime')} (CPU, all graph optimisations)",
                "nodes": len(graph.node), "op_types": dict(Counter(n.op_type for n in graph.node)),
                "float_between_qdq": dict(in_float), "split": {op: why for op in in_float}}

    def layer_outputs(self, path: Path, model, x, manifest: dict | None = None):
        from edge.quantize.sensitivity import onnx_layers

        return onnx_layers(path, model, x, manifest)


def disabled_optimizers(manifest: dict | None) -> tuple[str, ...]:
    """Session optimizers an artifact must run without (layers kept in float need onnxruntime's
    WeightBiasQuantization pass off, or it re-quantizes their weights); from its manifest."""
    q = ((manifest or {}).get("target_details") or {}).get("quantization") or {}
    return tuple(q.get("session_disabled_optimizers") or ())


def _spec(value_info, model: TensorSpec) -> TensorSpec:
    from onnx import helper

    dims = tuple(d.dim_value for d in value_info.type.tensor_type.shape.dim)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)).name
    return TensorSpec(model.name, dims, dtype, model.layout, model.model_shape or dims, model.model_layout,
                      tensor=value_info.name)


register_target(Onnx())
