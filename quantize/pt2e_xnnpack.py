"""int8 for ExecuTorch's XNNPACK delegate: the "pt2e-xnnpack" quantizer of the quantizer layer
(edge.quantize.base), which the executorch target asks for. PT2E (torchao.quantization.pt2e) on the
graph `torch.export` captures from the nn.Module: `prepare_pt2e` (observers; `prepare_qat_pt2e`:
fake quantization) -> calibrate (or train) -> `convert_pt2e` (quantize/dequantize pairs that the
XNNPACK partitioner lowers to its int8 kernels).

The XNNPACK quantizer's defaults (int8 activations with a histogram observer, int8 per-channel
symmetric weights in [-127, 127]) are kept. Two of its annotations lose accuracy on the networks
people deploy, and are made here as the fx-qnnpack recipe makes them (quantize/torch_ptq.py):

* conv -> ReLU6 (hardtanh): XNNPACK fuses the clamp into the convolution, but the quantizer only
  fuses ReLU, so the convolution's raw output is observed and the int8 range covers values the
  clamp then discards. Annotated here as one pattern whose output is observed after the clamp.
  EfficientNet-Lite0, 500 imagenette/train photos calibrating, all 4,000 imagenette/eval photos
  (benchmarks/executorch_annotation.py): 71.58% top-1 with the stock annotation, 72.95% with this
  one, the next and the pad fold (+1.38 pp, 95% CI +0.47..+2.30, McNemar p = 0.003); fp32 72.62%.
* zero padding (ZeroPad2d, TF "SAME" padding) is left unannotated, so the following convolution
  observes and requantizes the padded tensor. Padding with zeros keeps the range: it shares its
  input's quantization, and XNNPACK runs it as a quantized pad.
* before either, a symmetric zero pad that feeds a convolution is folded into the convolution's
  own padding (fold_zero_pads): same numbers, and in int8 one pass over the tensor fewer.

Layers kept in float (--max-drop) are left unannotated by module path, so they run in fp32 (on
XNNPACK's float kernels) between dequantize and quantize.

This module imports no torch at import time: `edge targets` lists the quantizers without it."""
from __future__ import annotations

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from edge.errors import ConversionError, UserError, one_line, write_failure
from edge.quantize.base import Quantizer, register_quantizer

METHODS = ("histogram", "minmax")  # activation observers; the first is the default
KEY = "quantization_annotation"


@dataclass
class Pt2ePrepared:
    """A captured graph with observers (or fake quantization) on its way to int8."""

    module: object  # the torch.fx.GraphModule from prepare_pt2e / prepare_qat_pt2e
    method: str
    batched: bool  # the capture has a dynamic batch axis: calibrate in batches
    keep_float: tuple[str, ...] = ()
    samples: int = 0
    qat: bool = False
    seconds: float = 0.0
    annotated: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # QAT: the training's figures
    converted: object = None  # the int8 graph convert_pt2e made (set by convert)


@contextlib.contextmanager
def _stage(name: str):
    """Turn any failure inside the block into a one-line ConversionError naming the stage."""
    with warnings.catch_warnings(), one_line(f"int8 PT2E quantization failed in {name}"):
        warnings.simplefilter("ignore")
        yield


def export_reason(e: BaseException) -> str:
    """torch.export's failure in one line: its exception type and first line, and the user's
    source line it stopped at where it names one."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    head = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
    for s in lines[1:]:
        if s.startswith("File ") and ".py" in s:
            return f"{head} (at {s[:160]})"
    return head


def _first(e: BaseException) -> str:
    lines = [s for s in str(e).strip().splitlines() if s.strip()]
    return lines[0][:200] if lines else ""


def _in_kept(node, keep_float: tuple[str, ...]) -> bool:
    """The node comes from a module kept in float (by module path, or inside one)."""
    if not keep_float:
        return False
    stack = node.meta.get("nn_module_stack") or {}
    paths = {p for p, _ in stack.values()}
    paths |= {p.removeprefix("L['self'].").replace("_modules['", "").replace("']", "") for p in paths}
    return any(p == k or p.startswith(k + ".") for p in paths for k in keep_float)


@functools.lru_cache(maxsize=None)
def _quantizer_class():
    """The XNNPACK quantizer with edge's two annotations (see the module docstring)."""
    import torch
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as U
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    clamps = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}
    pads = {torch.ops.aten.constant_pad_nd.default, torch.ops.aten.pad.default}

    class EdgeXnnpackQuantizer(XNNPACKQuantizer):
        keep_float: tuple[str, ...] = ()
        counts: dict = {}

        def annotate(self, model):
            cfg = self.global_config
            keep = self.keep_float
            self.set_filter_function(lambda n: not _in_kept(n, keep))
            fused = 0
            for n in model.graph.nodes:
                if n.op != "call_function" or n.target not in clamps:
                    continue
                conv = n.args[0]
                if (not isinstance(conv, torch.fx.Node) or not U._is_conv_node(conv) or len(conv.users) > 1
                        or KEY in conv.meta or _in_kept(conv, keep) or _in_kept(n, keep)):
                    continue
                lo, hi = (list(n.args[1:3]) + [-1.0, 1.0][len(n.args) - 1:])[:2]
                if not float(lo) <= 0.0 <= float(hi):
                    continue
                qmap = {conv.args[0]: U.get_input_act_qspec(cfg), conv.args[1]: U.get_weight_qspec(cfg)}
                part = [n, conv, conv.args[1]]
                if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node):
                    qmap[conv.args[2]] = U.get_bias_qspec(cfg)
                    part.append(conv.args[2])
                conv.meta[KEY] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
                n.meta[KEY] = QuantizationAnnotation(output_qspec=U.get_output_act_qspec(cfg), _annotated=True)
                U._mark_nodes_as_annotated(part)
                fused += 1
            model = super().annotate(model)
            shared = 0
            for n in model.graph.nodes:
                if n.op != "call_function" or n.target not in pads or KEY in n.meta or _in_kept(n, keep):
                    continue
                if n.target is torch.ops.aten.pad.default:  # pad(x, pad, mode="constant", value=None)
                    mode = n.args[2] if len(n.args) > 2 else n.kwargs.get("mode", "constant")
                    value = n.args[3] if len(n.args) > 3 else n.kwargs.get("value")
                else:  # constant_pad_nd(x, pad, value=0)
                    mode, value = "constant", n.args[2] if len(n.args) > 2 else n.kwargs.get("value", 0.0)
                prev = n.args[0]
                ann = prev.meta.get(KEY) if isinstance(prev, torch.fx.Node) else None
                if ann is None or ann.output_qspec is None or mode != "constant" or (value or 0.0) != 0.0:
                    continue
                spec = SharedQuantizationSpec(prev)
                n.meta[KEY] = QuantizationAnnotation(input_qspec_map={prev: spec}, output_qspec=spec, _annotated=True)
                shared += 1
            self.counts = {"conv_relu6_fused": fused, "zero_pads_sharing_input_qparams": shared}
            return model

    return EdgeXnnpackQuantizer


def _config(method: str, qat: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    cfg = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if method == "histogram" or qat:
        return cfg
    from dataclasses import replace

    from torchao.quantization.pt2e import MinMaxObserver

    act = replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
    return replace(cfg, input_activation=act, output_activation=act)


def capture(model, example: tuple, *, batched: bool = True):
    """torch.export of `model` on `example` (a tuple of tensors, batch 1). With `batched`, the
    leading axis of every input is made dynamic where the model allows it (Dim.AUTO), so that
    calibration runs in batches; returns (ExportedProgram, whether it is batched)."""
    import torch
    from torch.export import Dim

    if batched:
        try:
            twice = tuple(torch.cat([e, e]) for e in example)
            ep = torch.export.export(model, twice, dynamic_shapes=tuple({0: Dim.AUTO} for _ in example))
            first = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
            if all(isinstance(n.meta["val"].shape[0], torch.SymInt) for n in first):
                return ep, True
        except Exception:  # noqa: BLE001 - a batch axis the model fixes: calibrate one sample at a time
            pass
    return torch.export.export(model, example), False


def fold_zero_pads(gm) -> int:
    """Fold each symmetric zero padding that feeds only a 2-D convolution into that convolution's
    own padding (TensorFlow-style "SAME" models such as EfficientNet-Lite pad explicitly before
    every depthwise conv). Same numbers, one op fewer: XNNPACK fuses such pads into the conv in
    float, but in int8 the pad stays a separate pass over the tensor (benchmarks/executorch_pads.py
    measured the fold on Lite0's int8 .pte). Asymmetric pads (stride 2 "SAME") stay as they are.
    Returns how many pads were folded; `gm` (a torch.export module) is changed in place."""
    import torch

    aten = torch.ops.aten
    folded = 0
    for pad in list(gm.graph.nodes):
        if pad.op != "call_function" or pad.target not in (aten.pad.default, aten.constant_pad_nd.default):
            continue
        args = list(pad.args) + [None] * 4
        sizes, mode, value = args[1], "constant", args[2]
        if pad.target == aten.pad.default:
            mode, value = pad.kwargs.get("mode", args[2] or "constant"), pad.kwargs.get("value", args[3])
        else:
            value = pad.kwargs.get("value", value)
        users = list(pad.users)
        if mode != "constant" or value not in (None, 0, 0.0) or len(users) != 1 or len(sizes) not in (2, 4):
            continue
        conv = users[0]
        if conv.target != aten.conv2d.default or conv.args[0] is not pad or pad in conv.args[1:]:
            continue
        left, right, top, bottom = (*sizes, 0, 0)[:4]
        if left != right or top != bottom:
            continue
        cargs = list(conv.args) + [None] * (7 - len(conv.args))
        stride = cargs[3] if cargs[3] is not None else [1, 1]
        padding = cargs[4] if cargs[4] is not None else [0, 0]
        if isinstance(padding, str):
            continue
        padding = list(padding) * (2 // len(padding))
        cargs[3], cargs[4] = stride, [padding[0] + top, padding[1] + left]
        cargs[5] = cargs[5] if cargs[5] is not None else [1, 1]
        cargs[6] = cargs[6] if cargs[6] is not None else 1
        cargs[0] = pad.args[0]
        conv.args = tuple(cargs)
        gm.graph.erase_node(pad)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


def _calibrate(module, arrays: list[np.ndarray], batch_size: int) -> None:
    import torch

    from edge.progress import bar

    n = len(arrays[0])
    with torch.no_grad():
        for i in bar(range(0, n, batch_size), "pt2e calibration", total=-(-n // batch_size), unit="batch"):
            module(*[torch.from_numpy(np.ascontiguousarray(a[i:i + batch_size])) for a in arrays])


class Pt2eXnnpack(Quantizer):
    """PT2E with the XNNPACK quantizer, on the graph torch.export captures from the nn.Module."""

    name = "pt2e-xnnpack"
    applies_to = "module"
    methods = METHODS
    trainable = True
    description = ("PT2E (torchao) for ExecuTorch XNNPACK: int8 activations, int8 per-channel symmetric weights, "
                   "ReLU6 fused into the conv's range, zero padding sharing its input's range")

    def prepare(self, model, example, method: str | None = None, *, keep_float: tuple[str, ...] = (),
                qat: bool = False, fold_pads: bool = True) -> Pt2ePrepared:
        """Observers (or, with qat, fake quantization) on the graph captured from `model`
        (`example`: a tuple of batch-1 tensors, one per input); `fold_pads`: fold_zero_pads first."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        method = self.method(method)
        start = time.perf_counter()
        try:
            ep, batched = capture(model.eval(), tuple(example))
        except Exception as e:
            if write_failure(e):
                raise
            raise ConversionError(f"torch.export cannot capture the model: {export_reason(e)}") from e
        q = _quantizer_class()().set_global(_config(method, qat))
        q.keep_float = tuple(keep_float)
        graph = ep.module()
        folded = fold_zero_pads(graph) if fold_pads else 0
        with _stage("prepare_qat_pt2e" if qat else "prepare_pt2e"):
            module = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, q)
        return Pt2ePrepared(module, method, batched, tuple(keep_float), qat=qat,
                            seconds=time.perf_counter() - start,
                            annotated={"zero_pads_folded_into_conv": folded, **q.counts})

    def calibrate(self, p: Pt2ePrepared, samples, batch_size: int = 16) -> None:
        arrays = samples.arrays if hasattr(samples, "arrays") else samples
        arrays = list(arrays.values()) if isinstance(arrays, dict) else [np.asarray(arrays, np.float32)]
        start = time.perf_counter()
        with _stage("calibration"):
            _calibrate(p.module, arrays, batch_size if p.batched else 1)
        p.samples = int(len(arrays[0]))
        p.seconds += time.perf_counter() - start

    def convert(self, p: Pt2ePrepared, example) -> tuple[object, dict]:
        """The int8 graph, exported again at batch 1 for lowering: (ExportedProgram, the manifest's record)."""
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        start = time.perf_counter()
        with _stage("convert_pt2e"):
            converted = convert_pt2e(p.module)
        p.converted = converted  # for per-layer sensitivity (quantize/sensitivity.py pt2e_layers)
        with _stage("torch.export of the int8 graph"):
            ep = torch.export.export(converted, tuple(example))
        ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        quantized = sum("quantize_per" in o and "dequantize" not in o for o in ops)
        if not quantized:
            raise ConversionError("int8 quantization annotated nothing: the model would stay float")
        ranges = "ranges learned in QAT (PT2E fake quantization)" if p.qat else f"{p.method} observer"
        return ep, {
            "quantizer": self.name, "flow": "torchao PT2E: torch.export -> prepare" + ("_qat" if p.qat else "")
            + "_pt2e -> " + ("train" if p.qat else "calibrate") + " -> convert_pt2e",
            "method": "qat" if p.qat else p.method, "per_channel": True,
            **({} if p.qat else {"calibration_samples": p.samples,
                                 "calibration_batch": 16 if p.batched else 1}),
            "qconfig": {"activation": f"int8 per-tensor affine [-128, 127], {ranges}",
                        "weight": "int8 per-channel symmetric [-127, 127], scale >= 2**-12",
                        "bn_folded": True, **p.annotated},
            **({"qat": p.record} if p.qat else {}),
            "quantize_ops": quantized, "kept_float": list(p.keep_float),
            "seconds": round(p.seconds + time.perf_counter() - start, 1),
        }


register_quantizer(Pt2eXnnpack())
