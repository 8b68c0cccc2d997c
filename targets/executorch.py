"""ExecuTorch, PyTorch's on-device runtime: a `.pte` program lowered to the XNNPACK delegate
(`torch.export` -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` ->
`to_executorch`), fp32 and int8. int8 comes from the pt2e-xnnpack quantizer (PT2E with the
XNNPACK quantizer, quantize/pt2e_xnnpack.py); with --qat, from PT2E's own QAT flow.

The artifact runs here in ExecuTorch's runtime (`executorch.runtime`, the pybindings), and on a
board in the on-device runner (the torch-free `executorch-numpy-runtime` where the board's Python
allows it, else executorch's own runtime, which links libtorch).

Two traps of the runtime's Python API: a Method keeps no reference to its Program (drop the
Program and the next call crashes the process), and `_unsafe_reset_threadpool` must come before
any program is loaded; neither is done by this runner, which uses the runtime's default pool."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.errors import ConversionError, UserError, write_failure
from edge.runner import Runner
from edge.quantize.pt2e_xnnpack import _first, fold_zero_pads
from edge.targets.base import ExportContext, Exported, Target, io_specs, pkg_version, register_target

log = logging.getLogger("edge")


class PteRunner(Runner):
    runtime = "executorch"

    def __init__(self, path: Path, inputs, outputs):
        from edge.runner import quiet_native_stderr

        try:
            with quiet_native_stderr():  # cpuinfo's lines about the CPU it cannot read
                from executorch.runtime import Runtime

                self.program = Runtime.get().load_program(Path(path).read_bytes())
                self.method = self.program.load_method("forward")  # the Method needs self.program alive
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError or ValueError
            raise UserError(f"{path} is not a loadable ExecuTorch program: {_first(e)}") from None
        super().__init__(inputs, outputs)

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        ys = self.method.execute([torch.from_numpy(feeds[t.name]) for t in self.inputs])
        return [np.asarray(y.detach().numpy() if hasattr(y, "detach") else y) for y in ys]


class ExecuTorch(Target):
    name = "executorch"
    suffix = ".pte"
    precisions = ("fp32", "int8")
    runtime = "ExecuTorch runtime (XNNPACK delegate)"
    runner_backend = "pte"
    quantizer = "pt2e-xnnpack"
    float_fallback = True  # int8 layers can stay in float (--max-drop): left unannotated by module path
    requires = (("executorch", "executorch"), ("torchao", "torchao"))
    extra = "executorch"
    unsupported = {
        "fp16": "the XNNPACK delegate's fp16 path needs an fp16 graph from the model itself; use fp32 or int8",
        "io-int8": "the int8 program takes and returns float tensors (quantize/dequantize run inside the delegate)",
    }

    def quantize(self, ctx: ExportContext):
        """int8: observers on the graph captured from the module, calibrated; with QAT, the
        PT2E fake-quant graph trained on this build's training data (edge.quantize.qat)."""
        q = self.get_quantizer()
        if ctx.qat is not None:
            from edge.quantize.qat import pt2e_fine_tune

            return pt2e_fine_tune(ctx)
        prepared = q.prepare(ctx.model, ctx.example_tensors(), ctx.calib_method, keep_float=ctx.keep_float)
        q.calibrate(prepared, ctx.calib)
        return prepared

    def export(self, ctx: ExportContext, precision: str, out: Path, prepared=None) -> Exported:
        import torch

        from edge.progress import step

        details: dict = {"format": "ExecuTorch program (.pte), XNNPACK delegate",
                         "flow": "torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch"}
        if precision == "int8":
            ep, details["quantization"] = self.get_quantizer().convert(prepared, ctx.example_tensors())
            _CONVERTED[str(out.resolve())] = prepared.converted
        else:
            try:
                with torch.no_grad():
                    ep = torch.export.export(ctx.model, ctx.example_tensors())
                    graph = ep.module()
                    details["zero_pads_folded_into_conv"] = fold_zero_pads(graph)
                    if details["zero_pads_folded_into_conv"]:
                        ep = torch.export.export(graph, ctx.example_tensors())
            except Exception as e:
                if write_failure(e):
                    raise
                from edge.quantize.pt2e_xnnpack import export_reason

                raise ConversionError(f"torch.export cannot capture the model: {export_reason(e)}") from e
        with step(f"executorch {precision}: lowering to XNNPACK"):
            data, details["delegation"] = lower(ep)
        out.write_bytes(data)
        return Exported(out, ctx.model_inputs(), ctx.model_outputs(), details)

    def load(self, path: Path, manifest: dict | None = None, threads: int | None = None) -> PteRunner:
        inputs, outputs = io_specs(manifest, "inputs"), io_specs(manifest, "outputs")
        if inputs is None or outputs is None:
            raise UserError(f"{path}: running a .pte here needs its manifest.json (it names the inputs and outputs)")
        return PteRunner(path, inputs, outputs)

    def versions(self) -> dict[str, str | None]:
        return {"executorch": pkg_version("executorch"), "torchao": pkg_version("torchao"), "torch": pkg_version("torch")}

    def layer_outputs(self, path: Path, model, x, manifest: dict | None = None):
        """Per layer, for --max-drop during the build that made the artifact: the int8 graph PT2E
        converted, run in PyTorch (ExecuTorch does not expose the XNNPACK delegate's intermediate
        tensors). A finished .pte holds no such graph: `edge explain` compares its output only."""
        converted = _CONVERTED.get(str(Path(path).resolve()))
        if converted is None:
            return None
        from edge.quantize.sensitivity import pt2e_layers

        return pt2e_layers(converted, model, x)


# int8 graphs of the artifacts this process exported, by path, for layer_outputs (the fallback stage
# ranks layers right after the export; a .pte on disk cannot give them back)
_CONVERTED: dict[str, object] = {}


def lower(ep) -> tuple[bytes, dict]:
    """The program's bytes and what XNNPACK took: delegated subgraphs, nodes delegated and left to
    the portable kernels, and the op types left out."""
    import warnings

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            info = get_delegation_info(edge.exported_program().graph_module)
            data = edge.to_executorch().buffer
    except Exception as e:
        if write_failure(e):
            raise
        raise ConversionError(f"ExecuTorch lowering failed: {type(e).__name__}: {_first(e)}") from e
    # getitem unpacks the delegate's outputs: bookkeeping, not an op left to the portable kernels
    left = {k: v.non_delegated for k, v in info.delegation_by_operator.items() if v.non_delegated and k != "getitem"}
    outside = sum(left.values())
    total = info.num_delegated_nodes + outside
    record = {"backend": "XnnpackBackend", "delegated_subgraphs": info.num_delegated_subgraphs,
              "delegated_nodes": info.num_delegated_nodes, "non_delegated_nodes": outside,
              "delegated_share": round(info.num_delegated_nodes / total, 4) if total else None,
              "non_delegated_ops": dict(sorted(left.items()))}
    if left:
        log.warning("executorch: %d node(s) left outside XNNPACK, on the portable kernels: %s",
                    outside, ", ".join(f"{k} x{v}" for k, v in sorted(left.items())))
    return bytes(data), record


register_target(ExecuTorch())
