"""Post-training int8 quantization for the PyTorch mobile lite interpreter (qnnpack engine): the
"fx-qnnpack" quantizer of the quantizer layer (edge.quantize.base), which the torchscript-mobile
target asks for, and whose prepare-for-training is what QAT trains (edge.quantize.qat).

FX graph mode (torch.ao.quantization: deprecated, but without torchao the only int8 path to
TorchScript-mobile) on a copy of the user's eval-mode module. Each choice below was measured on
EfficientNet-Lite0 (750 ImageNet images, fp32 80.27% top-1; benchmarks/accuracy_int8.py measures the result):

* weights qint8, per-output-channel symmetric: per-tensor weights lose ~6 points on depthwise
  networks. qnnpack runs per-channel conv/linear exactly (checked against a float reference).
* activations quint8 over the full 0..255 range: qnnpack needs no `reduce_range`, and torch's
  qint8 "symmetric qnnpack" qconfigs only run through XNNPACK, which this torch build lacks.
* weight scales floored at 2**-12 (as torch's own qnnpack qconfigs do): qnnpack quantizes the
  bias to int32 at scale input*weight, which the all-zero channels left by BN folding overflow.
* conv+BN(+ReLU) are fused by FX, ReLU6 is not: the observer feeding a ReLU6/Hardtanh records
  clamped values, so the conv's int8 range covers [0, 6] rather than its raw pre-activation
  range (worth ~4 points), and the ReLU6, now a no-op on the int8 values, is dropped.
* qnnpack's quantized clamp/hardtanh/relu6 kernels scramble channels_last tensors (every conv
  output is one): a ReLU6 that cannot be dropped gets a `.contiguous()` first.
* ZeroPad2d (TF "SAME" padding) shares its input's qparams, so its requantization is lossless.
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge.errors import ConversionError, UserError, one_line
from edge.quantize.base import Quantizer, register_quantizer

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

METHODS = ("minmax", "histogram")
DEFAULT_METHOD = "histogram"  # EfficientNet-Lite0 .ptl: 80.67% (minmax 80.00%), fp32 80.27%
ENGINE = "qnnpack"
WEIGHT_SCALE_MIN = 2.0 ** -12


class _ClampAware:
    """Observer mixin: when `clamp` is set, record the values the following clamp op keeps."""

    clamp: tuple[float, float] | None = None

    def forward(self, x):
        if self.clamp is None:
            return super().forward(x)
        super().forward(x.detach().clamp(*self.clamp))
        return x  # the graph itself still sees (and clamps) the raw values


def _activation_observer(method: str):
    import torch
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

    base = {"minmax": MinMaxObserver, "histogram": HistogramObserver,
            "moving_minmax": MovingAverageMinMaxObserver}[method]
    observer = type(f"ClampAware{base.__name__}", (_ClampAware, base), {})
    return observer.with_args(dtype=torch.quint8, reduce_range=False)


def _weight_observer(per_channel: bool, moving: bool = False):
    import torch
    from torch.ao.quantization import observer as obs

    if per_channel:
        base = obs.MovingAveragePerChannelMinMaxObserver if moving else obs.PerChannelMinMaxObserver
        return base.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, eps=WEIGHT_SCALE_MIN)
    base = obs.MovingAverageMinMaxObserver if moving else obs.MinMaxObserver
    return base.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, eps=WEIGHT_SCALE_MIN)


def _qconfig(method: str, per_channel: bool):
    from torch.ao.quantization import QConfig

    return QConfig(activation=_activation_observer(method), weight=_weight_observer(per_channel))


def qat_qconfig(per_channel: bool = True):
    """The PTQ qconfig as fake quantization for training: the same dtypes, scale floor and
    ReLU6-aware activation observers, but moving-average min/max, which follows the weights and
    activations as they train (a histogram per training step would also be far too slow). Plain
    FakeQuantize, not torch's fused default: the fused kernel bypasses the observer's forward,
    where the ReLU6 clamping happens. Weights use [-127, 127] (scale absmax/127), the grid ONNX
    and TFLite quantize weights to, so the trained weights land on the same levels in all three."""
    from torch.ao.quantization import FakeQuantize, QConfig

    act = _activation_observer("moving_minmax")
    weight = _weight_observer(per_channel, moving=True)
    return QConfig(activation=FakeQuantize.with_args(observer=act.p.func, quant_min=0, quant_max=255,
                                                     **act.p.keywords),
                   weight=FakeQuantize.with_args(observer=weight.p.func, quant_min=-127, quant_max=127,
                                                 **weight.p.keywords))


def _backend_config():
    """torch's qnnpack patterns, plus ZeroPad2d sharing its input's qparams (zero padding is exact)."""
    import torch
    import torch.nn as nn
    from torch.ao.quantization.backend_config import (BackendPatternConfig, DTypeConfig, ObservationType,
                                                      get_qnnpack_backend_config)

    pad = (BackendPatternConfig(nn.ZeroPad2d)
           .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
           .set_dtype_configs([DTypeConfig(input_dtype=torch.quint8, output_dtype=torch.quint8)]))
    return get_qnnpack_backend_config().set_backend_pattern_config(pad)


def _clamp_bounds(node, modules) -> tuple[float, float] | None:
    """(lo, hi) if `node` is a ReLU6/Hardtanh module or an F.relu6 call, else None."""
    import torch.nn as nn
    import torch.nn.functional as F

    if node.op == "call_module" and isinstance(modules[node.target], nn.Hardtanh):  # ReLU6 is one
        return float(modules[node.target].min_val), float(modules[node.target].max_val)
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    return None


def _mark_clamped_observers(prepared) -> int:
    """Let each observer whose every value ends up clamped to one [lo, hi] record it clamped.

    FX shares one observer instance along chains like conv -> ReLU6 -> ZeroPad2d. Clamping its
    statistics is exact when every value it sees either feeds only clamps of those bounds, or is
    already in range: a clamp's output, or a share-qparams op (pad, pool, view) applied to a
    value it saw before (range-preserving while lo <= 0 <= hi, which covers zero padding).
    """
    modules = dict(prepared.named_modules(remove_duplicate=False))
    calls: dict[int, list] = {}
    for n in prepared.graph.nodes:
        if n.op == "call_module" and _clamp_aware(modules[n.target]) is not None:
            calls.setdefault(id(modules[n.target]), []).append(n)
    marked = 0
    for nodes in calls.values():
        bounds = {_clamp_bounds(u, modules) for n in nodes for u in n.users} - {None}
        if len(bounds) != 1:
            continue
        bound = bounds.pop()

        def safe(n):
            src = n.args[0]
            return (all(_clamp_bounds(u, modules) == bound for u in n.users)
                    or _clamp_bounds(src, modules) == bound or bool(src.args) and src.args[0] in nodes)

        if bound[0] <= 0.0 <= bound[1] and all(safe(n) for n in nodes):
            _clamp_aware(modules[nodes[0].target]).clamp = bound
            marked += 1
    return marked


def _clamp_aware(module) -> _ClampAware | None:
    """The clamp-aware observer of an observer node: the module itself (PTQ) or the observer
    inside its FakeQuantize (QAT)."""
    for m in (module, getattr(module, "activation_post_process", None)):
        if isinstance(m, _ClampAware):
            return m
    return None


def _fix_clamps(q) -> dict:
    """Drop ReLU6/Hardtanh that are no-ops on their int8 input; make the rest see NCHW tensors."""
    import torch
    import torch.nn.functional as F

    modules = dict(q.named_modules())
    dropped = contiguous = 0
    for n in list(q.graph.nodes):
        bounds = _clamp_bounds(n, modules)
        if bounds is None and not (n.op == "call_function" and n.target in (F.hardtanh, torch.clamp)
                                   or n.op == "call_method" and n.target == "clamp"):
            continue
        src = n.args[0]
        qsrc = modules.get(src.target) if src.op == "call_module" else None
        if (bounds and bounds[0] == 0.0 and hasattr(qsrc, "scale") and int(qsrc.zero_point) == 0
                and round(bounds[1] / float(qsrc.scale)) >= 255):  # the int8 range lies inside [0, hi]
            n.replace_all_uses_with(src)
            q.graph.erase_node(n)
            dropped += 1
        else:
            with q.graph.inserting_before(n):
                n.replace_input_with(src, q.graph.call_method("contiguous", (src,)))
            contiguous += 1
    q.graph.lint()
    q.recompile()
    return {"clamps_dropped": dropped, "clamps_made_contiguous": contiguous}


@contextlib.contextmanager
def _engine(name: str):
    """Use quantized engine `name` inside the block; restore the previous one afterwards."""
    import torch

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def _quiet_deprecations():
    """Silence only the deprecation notices of torch.ao.quantization, quantized tensors and jit.trace."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*(torch\.ao\.quantization|quantize_per_tensor|"
                                                  r"torch\.jit\.trace).*deprecated")
        yield


def _stage(name: str):
    """Turn any failure inside the block into a one-line ConversionError naming the stage."""
    return one_line(f"int8 {ENGINE} quantization failed in {name}")


def _calibrate(prepared, calib, batch_size: int) -> None:
    """Run the calibration samples (one array, or one per input in the model's input order) through."""
    import torch

    from edge.progress import bar

    arrays = list(calib.values()) if isinstance(calib, dict) else [np.asarray(calib, dtype=np.float32)]
    n = len(arrays[0])
    with torch.inference_mode():
        for i in bar(range(0, n, batch_size), "fx calibration", total=-(-n // batch_size), unit="batch"):
            prepared(*[torch.from_numpy(np.ascontiguousarray(a[i:i + batch_size])) for a in arrays])


def _quantized_ops(traced) -> dict:
    kinds = [n.kind() for n in traced.inlined_graph.nodes()]
    return {k: kinds.count(k) for k in sorted(set(kinds)) if k.startswith("quantized::")}


def _examples(example) -> tuple:
    """The example inputs as a tuple (one tensor is the single input's)."""
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def _check_inputs(method: str, example, calib) -> None:
    import torch

    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose one of: {', '.join(METHODS)}")
    arrays = list(calib.values()) if isinstance(calib, dict) else [np.asarray(calib)]
    for a, e in zip(arrays, _examples(example)):
        if a.ndim != e.dim() or a.shape[1:] != tuple(e.shape[1:]) or len(a) == 0:
            raise UserError(f"calibration data of shape {a.shape} does not match the example input {tuple(e.shape)}")
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise ConversionError(f"this torch build has no '{ENGINE}' quantized engine")


def quantize_torch(model: nn.Module, example, calib, *, method: str = DEFAULT_METHOD,
                   per_channel: bool = True, batch_size: int = 16) -> tuple[torch.jit.ScriptModule, dict]:
    """Return a traced, int8 (qnnpack) TorchScript module ready for _save_for_lite_interpreter, and a
    JSON-serialisable dict describing what was done (engine, method, per_channel, qconfig summary) for the manifest.
    `example`: the example input (a tensor, or a tuple of them); `calib`: its samples (one array, or one per input
    in the same order), preprocessed like `example`. Must not modify `model` in place (deepcopy)."""
    _check_inputs(method, example, calib)
    start = time.perf_counter()
    prepared, clamped = prepare(model, example, _qconfig(method, per_channel))
    with _quiet_deprecations(), _stage("calibration"):
        _calibrate(prepared, calib, batch_size)
    traced, info = to_lite(prepared, example)
    return traced, {
        "engine": ENGINE, "method": method, "per_channel": per_channel,
        "calibration_samples": int(len(next(iter(calib.values())) if isinstance(calib, dict) else calib)),
        "qconfig": {
            "activation": f"quint8 per-tensor affine, full 0..255 range, {method} observer",
            "weight": f"qint8 {'per-channel' if per_channel else 'per-tensor'} symmetric, scale >= 2**-12",
            "bn_folded": True, "relu6_clamped_observers": clamped, **info["fixes"],
        },
        "quantized_ops": info["ops"], "seconds": round(time.perf_counter() - start, 1),
    }


def prepare(model: nn.Module, example, qconfig, *, qat: bool = False) -> tuple[nn.Module, int]:
    """FX-prepare a copy of `model` for the qnnpack engine: observers (PTQ, eval mode) or fake
    quantization with conv+BN folding simulated (QAT, train mode). Returns it and how many
    activation observers record ReLU6-clamped values. `example`: a tensor or a tuple of them."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    with _quiet_deprecations(), _stage("prepare_qat_fx (FX symbolic tracing)" if qat else
                                       "prepare_fx (FX symbolic tracing)"):
        if qat:
            mapping = get_default_qat_qconfig_mapping(ENGINE).set_global(qconfig)
            prepared = prepare_qat_fx(copy.deepcopy(model).train(), mapping, _examples(example),
                                      backend_config=_backend_config())
        else:
            mapping = get_default_qconfig_mapping(ENGINE).set_global(qconfig)
            prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, _examples(example),
                                  backend_config=_backend_config())
        return prepared, _mark_clamped_observers(prepared)


def to_lite(prepared: nn.Module, example) -> tuple[torch.jit.ScriptModule, dict]:
    """Convert a calibrated (or QAT-trained) prepared model to int8 qnnpack modules and trace it.
    Returns the traced module and {"fixes": clamp fixes, "ops": quantized op counts}."""
    import torch
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet_deprecations(), _engine(ENGINE):
        with _stage("convert_fx"):
            qmodel = convert_fx(copy.deepcopy(prepared).eval(), backend_config=_backend_config())
            fixes = _fix_clamps(qmodel)
        with _stage("torch.jit.trace"), torch.inference_mode():
            traced = torch.jit.trace(qmodel, _examples(example), check_trace=False)
            traced(*_examples(example))  # fail here rather than on the phone
            ops = _quantized_ops(traced)
    if not any(k.startswith(("quantized::conv", "quantized::linear")) for k in ops):
        raise ConversionError("int8 quantization left no quantized conv/linear op: the model would stay float")
    return traced, {"fixes": fixes, "ops": ops}


@dataclass
class FxPrepared:
    """A module with observers (or trained fake quantization) on its way to int8 qnnpack modules."""

    module: object  # the FX GraphModule
    method: str
    per_channel: bool = True
    clamped: int = 0  # activation observers that record what a following ReLU6 keeps
    samples: int = 0  # calibration samples seen
    qat: bool = False
    seconds: float = 0.0


class FxQnnpack(Quantizer):
    """torch.ao FX graph mode for the qnnpack engine, on the nn.Module before it is traced."""

    name = "fx-qnnpack"
    applies_to = "module"
    methods = (DEFAULT_METHOD, *(m for m in METHODS if m != DEFAULT_METHOD))
    trainable = True
    description = "torch.ao FX (qnnpack): quint8 activations, qint8 per-channel weights, ReLU6-aware ranges"

    def prepare(self, model, example, method: str | None = None, *, per_channel: bool = True) -> FxPrepared:
        """Observers on a copy of `model` (`example`: a tensor or a tuple of example inputs)."""
        method = self.method(method)
        start = time.perf_counter()
        module, clamped = prepare(model, example, _qconfig(method, per_channel))
        return FxPrepared(module, method, per_channel, clamped, seconds=time.perf_counter() - start)

    def prepare_qat(self, model, example, *, per_channel: bool = True):
        """Fake quantization with the PTQ recipe, for training (edge.quantize.qat): (module, clamped)."""
        return prepare(model, example, qat_qconfig(per_channel), qat=True)

    def calibrate(self, p: FxPrepared, samples, batch_size: int = 16) -> None:
        arrays = samples.arrays if hasattr(samples, "arrays") else samples
        start = time.perf_counter()
        with _quiet_deprecations(), _stage("calibration"):
            _calibrate(p.module, arrays, batch_size)
        p.samples = int(len(next(iter(arrays.values())) if isinstance(arrays, dict) else arrays))
        p.seconds += time.perf_counter() - start

    def convert(self, p: FxPrepared, example):
        """The int8 qnnpack modules, traced for the lite interpreter: (module, the manifest's record)."""
        start = time.perf_counter()
        traced, info = to_lite(p.module, example)
        ranges = ("ranges learned in QAT (PTQ-range start, frozen late)" if p.qat
                  else f"{p.method} observer")
        return traced, {
            "quantizer": self.name, "engine": ENGINE, "method": "qat" if p.qat else p.method,
            "per_channel": p.per_channel, **({} if p.qat else {"calibration_samples": p.samples}),
            "qconfig": {
                "activation": f"quint8 per-tensor affine, full 0..255 range, {ranges}",
                "weight": f"qint8 {'per-channel' if p.per_channel else 'per-tensor'} symmetric"
                          f"{' [-127, 127]' if p.qat else ''}, scale >= 2**-12{', trained in QAT' if p.qat else ''}",
                "bn_folded": True, **({} if p.qat else {"relu6_clamped_observers": p.clamped}), **info["fixes"],
            },
            "quantized_ops": info["ops"], "seconds": round(p.seconds + time.perf_counter() - start, 1),
        }


register_quantizer(FxQnnpack())
