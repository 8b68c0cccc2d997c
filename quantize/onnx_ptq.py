"""Post-training int8 quantization of an fp32 ONNX graph into a QDQ model for onnxruntime: the
"ort-static" quantizer of the quantizer layer (edge.quantize.base), which the onnx target asks for.

On the ONNX graph, so any exported model works (several inputs, integer inputs such as token ids,
which stay unquantized): onnxruntime's quant_pre_process folds BatchNorm
into Conv; a pass over the calibration data gives activation ranges (min/max, or a histogram search)
and each Conv/Gemm input's mean and covariance. Weights (int8, symmetric) are rounded up or down to
minimise the layer's output error E[(dW x)^2] (AdaRound's quadratic objective, Nagel et al. 2020,
solved greedily) instead of to the nearest level, and biases absorb the remaining mean error E[dW x]
(bias correction, Nagel et al. 2019). quantize_static then writes QDQ with uint8 activations; Clip/Relu
fold into the preceding Conv's output quantization, and Gemm outputs (the scores) stay float, which
onnxruntime's QGemm writes directly.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.errors import ConversionError, UserError, require, write_failure
from edge.quantize.base import Quantizer, register_quantizer

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_METHOD = "mse"

PERCENTILE = 99.999       # "percentile" keeps this share of each activation's values inside its range
HIST_BINS = 4096          # fine enough that a clipped range still spans several bins per uint8 step
HIST_SAMPLES = 1 << 16    # values per tensor and image that go into a histogram (a strided subsample)
PATCHES_PER_IMAGE = 128   # input positions sampled per image and layer for the input covariance
ROUNDING_BUDGET = 3e8     # no rounding search where out_channels * fan_in^2 exceeds this (time, memory)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray, *, method: str = DEFAULT_METHOD,
                  per_channel: bool = True, nodes_to_exclude: Sequence[str] = (),
                  known_ranges: Sequence[tuple[np.ndarray, tuple[float, float]]] = ()) -> dict:
    """Write a QDQ int8 model to out_path. `calib` is (N, C, H, W) float32, preprocessed like the model input.
    `known_ranges`: activation ranges decided elsewhere (by quantization-aware training), each given with the
    tensor's values on calib[0]; a graph tensor with those values gets that range instead of a calibrated one
    (matching by value needs no agreement on names between PyTorch and the exported graph).
    `calib` is one array (a single-input model) or one array per input name.
    Returns a JSON-serialisable dict describing what was done (method, per_channel, formats, excluded nodes, any
    preprocessing such as BN folding) for the build manifest."""
    return _quantize(fp32_path, out_path, calib, method=method, per_channel=per_channel,
                     nodes_to_exclude=nodes_to_exclude, known_ranges=known_ranges)


def _quantize(fp32_path, out_path, calib, *, method, per_channel, nodes_to_exclude, adaround=True,
              bias_correction=True, float_logits=True, known_ranges=()) -> dict:
    """quantize_onnx with the research switches exposed (their defaults are what quantize_onnx does):
    the quantizer's three steps, in a temporary folder."""
    q = QUANTIZER
    with tempfile.TemporaryDirectory(prefix="edge-ptq-") as tmp:
        prepared = q.prepare(fp32_path, Path(tmp))
        q.calibrate(prepared, calib, method, known_ranges)
        return q.convert(prepared, out_path, per_channel=per_channel, nodes_to_exclude=nodes_to_exclude,
                         adaround=adaround, bias_correction=bias_correction, float_logits=float_logits)


@contextlib.contextmanager
def _one_line(fp32_path: Path):
    try:
        yield
    except (UserError, ConversionError):
        raise
    except Exception as e:  # onnx / onnxruntime raise many types; the CLI wants one line
        if write_failure(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(f"int8 quantization of {fp32_path.name} failed: {first}") from e


@dataclass
class Prepared:
    """An fp32 graph on its way to QDQ: after prepare (BN folded), then calibrate (statistics)."""

    folder: Path
    source: Path
    model: object  # onnx.ModelProto
    folded: int
    start: float
    calib: dict | None = None
    method: str | None = None
    stats: dict | None = None
    ranges: dict | None = None
    kept: dict | None = None


class OrtStatic(Quantizer):
    """onnxruntime's static QDQ quantization, with edge's calibration (histogram MSE ranges), rounding
    search and bias correction; on the exported fp32 ONNX graph."""

    name = "ort-static"
    applies_to = "graph"
    methods = (DEFAULT_METHOD, *(m for m in METHODS if m != DEFAULT_METHOD))
    description = "onnxruntime quantize_static, QDQ, uint8 activations / int8 per-channel weights"

    def prepare(self, fp32_path, folder: Path) -> Prepared:
        """onnxruntime's quant_pre_process (BN folded into Conv, shapes inferred), into `folder`."""
        import onnx

        require("onnxruntime.quantization", "int8 ONNX quantization", package="onnxruntime", extra="onnx")
        pre = Path(folder) / "pre.onnx"
        with _one_line(Path(fp32_path)):
            folded = _preprocess(Path(fp32_path), pre)
            return Prepared(Path(folder), Path(fp32_path), onnx.load(str(pre)), folded, time.time())

    def calibrate(self, p: Prepared, calib, method: str | None = None, known_ranges=()) -> None:
        """Activation ranges and each Conv/Gemm input's statistics over the calibration samples (one
        array, or one per input name). `known_ranges`: ranges decided elsewhere (by QAT), each given
        with its tensor's values on the first sample; a tensor with those values takes that range."""
        p.method = self.method(method)
        p.calib = _by_input(p.model, calib.arrays if hasattr(calib, "arrays") else calib)
        with _one_line(p.source):
            p.stats = _collect(p.model, p.calib, histograms=p.method in ("percentile", "mse"),
                               keep_first=bool(known_ranges))
        p.ranges = None if p.method == "entropy" else {t: _range(p.method, s) for t, s in p.stats["act"].items()}
        p.kept = _known(p.ranges, p.stats.get("first", {}), known_ranges) if known_ranges and p.ranges else None

    def convert(self, p: Prepared, out_path, *, per_channel: bool = True, nodes_to_exclude: Sequence[str] = (),
                adaround: bool = True, bias_correction: bool = True, float_logits: bool = True) -> dict:
        """Weights onto their int8 grid (rounding search, bias correction), then quantize_static's QDQ
        graph with the calibrated ranges, written atomically to out_path. Returns the manifest's record.
        Works on a copy of the prepared graph: convert again with other nodes kept in float (--max-drop)."""
        import onnx
        import onnxruntime

        unknown = sorted(set(nodes_to_exclude) - {n.name for n in p.model.graph.node})
        if unknown:
            raise UserError(f"nodes_to_exclude names not in the graph: {', '.join(unknown)}")
        model = onnx.ModelProto()
        model.CopyFrom(p.model)
        with _one_line(p.source):
            done = _quantize_weights(model, p.stats["lin"], per_channel, set(nodes_to_exclude), adaround,
                                     bias_correction)
            pre, qdq = p.folder / "weights.onnx", p.folder / "qdq.onnx"
            onnx.save(model, str(pre))
            _quantize_static(pre, qdq, p.calib, p.ranges, per_channel, list(nodes_to_exclude), float_logits)
            onnx.checker.check_model(str(qdq))
            _atomic_write(qdq.read_bytes(), Path(out_path))
        return {
            "quantizer": self.name, "format": "QDQ", "runtime": f"onnxruntime {onnxruntime.__version__}",
            "method": p.method,
            "per_channel": per_channel, "calibration_samples": _count(p.calib), "activations": "uint8 asymmetric",
            "weights": f"int8 symmetric [-127, 127], {'per output channel' if per_channel else 'per tensor'}",
            "preprocessing": [f"onnxruntime quant_pre_process: {p.folded} BatchNormalization folded into Conv",
                              "Clip/Relu after a Conv folded into its output quantization"],
            "weight_rounding": f"output-error-minimising on {done['searched']} of {done['layers']} Conv/Gemm, "
                               "nearest on the rest" if adaround else "nearest",
            "bias_correction": f"{done['corrected']} layers" if bias_correction else "none",
            "float_outputs": "Gemm (QGemm writes float)" if float_logits else "none",
            "excluded_nodes": list(nodes_to_exclude), "seconds": round(time.time() - p.start, 1),
            **({"known_ranges": p.kept} if p.kept else {}),
            # onnxruntime's WeightBiasQuantization pass would re-quantize (per tensor) an fp32 Conv/Gemm between
            # DequantizeLinear and QuantizeLinear when the session loads: excluded nodes need it switched off
            **({"session_disabled_optimizers": ["WeightBiasQuantization"]} if nodes_to_exclude else {}),
        }


QUANTIZER = register_quantizer(OrtStatic())


def _preprocess(src: Path, dst: Path) -> int:
    """Run onnxruntime's quant_pre_process; return how many BatchNormalization nodes it folded."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception:  # symbolic shape inference fails on some graphs; ONNX shape inference suffices here
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    bn = [sum(n.op_type == "BatchNormalization" for n in onnx.load(str(p)).graph.node) for p in (src, dst)]
    return bn[0] - bn[1]


def _by_input(model, calib) -> dict[str, np.ndarray]:
    """Calibration samples by graph input name (a bare array is the single input's)."""
    names = [i.name for i in model.graph.input]
    if not isinstance(calib, dict):
        calib = {names[0]: np.asarray(calib)}
    missing = [n for n in names if n not in calib]
    if missing or not calib or _count(calib) == 0:
        raise UserError(f"calibration data must hold samples for every graph input ({', '.join(names)}); "
                        f"missing {', '.join(missing) or 'samples'}")
    return {n: np.asarray(calib[n]) for n in names}


def _count(calib) -> int:
    return len(next(iter(calib.values()))) if isinstance(calib, dict) else len(calib)


def _batches(model, calib: dict[str, np.ndarray]):
    """Yield {input: batch} feeds of the model's batch size (1 when dynamic), every input."""
    batch = _batch_size(model, calib)
    for i in range(0, _count(calib) - batch + 1, batch):
        yield {k: np.ascontiguousarray(v[i:i + batch]) for k, v in calib.items()}


def _batch_size(model, calib: dict[str, np.ndarray]) -> int:
    """The model's batch size (1 when dynamic), after checking that the samples fit its inputs."""
    batch = 1
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
        c = calib[inp.name]
        if len(dims) != c.ndim or any(0 < d != s for d, s in zip(dims[1:], c.shape[1:])):
            raise UserError(f"calibration data of shape {c.shape} does not fit the model input {inp.name} {dims}")
        batch = max(batch, dims[0] if dims else 1)
    n = _count(calib)
    if n < batch:
        raise UserError(f"{n} calibration samples are fewer than the model's batch size {batch}")
    return batch


def _collect(model, calib: dict[str, np.ndarray], histograms: bool, keep_first: bool = False) -> dict:
    """Run the fp32 model with every float activation exposed. Returns {"act": {tensor: {lo, hi[, hist]}},
    "lin": {node: {mean: mean input, cov: sum of input patch outer products, n: patches}}} for Conv/Gemm,
    and with keep_first, "first": {tensor: its values on the first batch}."""
    import onnx
    import onnxruntime as ort

    from edge.progress import bar

    dims = {t.name: t.dims for t in model.graph.initializer}
    infos = {v.name: v for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    names = {t for n in model.graph.node for t in [*n.input, *n.output] if t in infos and t not in dims
             and infos[t].type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    feeds = {i.name for i in model.graph.input if i.name in names}  # float inputs (token ids are not quantized)
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    aug.graph.output.extend(infos[t] for t in sorted(names - {o.name for o in aug.graph.output} - feeds))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(aug.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    lins = [n for n in model.graph.node if _supported(n) and n.input[0] in names | feeds and n.input[1] in dims]
    searched = {n.name for n in lins if _search_cost(n, dims[n.input[1]]) <= ROUNDING_BUDGET}
    act, lin, rng = {}, {n.name: {"mean": 0.0, "cov": 0.0, "n": 0} for n in lins}, np.random.default_rng(0)

    def activations(desc: str):
        total = _count(calib) // _batch_size(model, calib)
        for feed in bar(_batches(model, calib), desc, total=total, unit="batch"):
            yield {**dict(zip(outs, sess.run(outs, feed))), **{k: v for k, v in feed.items() if k in feeds}}

    first = {}
    for count, values in enumerate(activations("onnx calibration"), 1):
        if keep_first and count == 1:
            first = values
        for t, v in values.items():
            s = act.setdefault(t, {"lo": np.inf, "hi": -np.inf})
            s["lo"], s["hi"] = min(s["lo"], float(v.min())), max(s["hi"], float(v.max()))
        for n in lins:
            s, x = lin[n.name], values[n.input[0]]
            s["mean"] = s["mean"] + (x.mean(axis=0, dtype=np.float64) - s["mean"]) / count
            for p in _patches(n, x, rng) if n.name in searched else ():  # (groups, fan_in, positions)
                s["cov"] = s["cov"] + np.matmul(p, p.transpose(0, 2, 1))  # float32 sums are precise enough
                s["n"] += p.shape[-1]
    for values in activations("onnx calibration, histograms") if histograms else ():  # the bins need the final min/max
        for t, v in values.items():
            s = act[t]
            if s["hi"] > s["lo"]:  # float32 / int32 arithmetic on a strided subsample: this loop dominates
                v = v.ravel()[::max(1, v.size // HIST_SAMPLES)]
                step = np.float32(HIST_BINS * (1 - 1e-6) / (s["hi"] - s["lo"]))
                idx = ((v - np.float32(s["lo"])) * step).astype(np.int32)
                s["hist"] = s.get("hist", 0) + np.bincount(idx, minlength=HIST_BINS)
    for t in feeds:  # the model input is bounded by preprocessing: never clip it
        act.get(t, {}).pop("hist", None)
    return {"act": act, "lin": lin, "first": first}


def _known(ranges: dict, first: dict, known) -> dict:
    """Set ranges[t] to a known range for each tensor t whose first-batch values match that range's
    tensor values (same size, equal within float tolerance). Returns counts for the manifest."""
    by_size: dict[int, list] = {}
    for t, v in first.items():
        if t in ranges:
            by_size.setdefault(v.size, []).append(t)
    used, matched = set(), 0
    for values, rng in known:
        tol = 1e-3 * max(1.0, float(np.abs(values).max(initial=0.0)))
        hits = [t for t in by_size.get(values.size, ()) if t not in used
                and np.abs(first[t].ravel() - values.ravel()).max() <= tol]
        for t in hits:
            ranges[t] = (float(min(rng[0], 0.0)), float(max(rng[1], 0.0)))
            used.add(t)
        matched += bool(hits)
    return {"given": len(known), "matched": matched, "tensors_set": len(used),
            "tensors_calibrated": len(ranges) - len(used)}


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _supported(node) -> bool:
    """A 2-D Conv with explicit pads, or a Gemm without transA: the layers whose weights are handled here."""
    a = _attrs(node)
    if node.op_type == "Conv":
        return len(a.get("kernel_shape", ())) == 2 and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    return node.op_type == "Gemm" and not a.get("transA", 0)


def _search_cost(node, dims) -> float:
    """out_channels * fan_in^2 of a Conv/Gemm weight: the cost of its rounding search."""
    out = dims[0] if node.op_type == "Conv" or _attrs(node).get("transB", 0) else dims[-1]
    return float(np.prod(dims)) ** 2 / max(out, 1)


def _patches(node, x: np.ndarray, rng):
    """Yield per sample of x a Conv's input patches at up to PATCHES_PER_IMAGE random output positions as
    (groups, fan_in, positions), zero padding included; for a Gemm, the input row as (1, fan_in, 1)."""
    a = _attrs(node)
    if node.op_type == "Gemm":
        yield from (row.reshape(1, -1, 1) for row in x.reshape(len(x), -1))
        return
    (kh, kw), (sh, sw) = a["kernel_shape"], a.get("strides", [1, 1])
    (dh, dw), pads, (h, w) = a.get("dilations", [1, 1]), a.get("pads", [0, 0, 0, 0]), x.shape[2:]
    oh, ow = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1, (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    for sample in x:
        pos = np.arange(oh * ow) if oh * ow <= PATCHES_PER_IMAGE else rng.choice(oh * ow, PATCHES_PER_IMAGE, False)
        rows = (pos // ow * sh - pads[0])[None, None, :] + (np.arange(kh) * dh)[:, None, None]  # (kh, 1, P)
        cols = (pos % ow * sw - pads[1])[None, None, :] + (np.arange(kw) * dw)[None, :, None]  # (1, kw, P)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        patch = sample[:, np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)] * inside  # (C, kh, kw, P)
        yield patch.reshape(a.get("group", 1), -1, len(pos))


def _range(method: str, s: dict) -> tuple[float, float]:
    """An activation's quantization range from its calibration statistics."""
    if "hist" not in s or method == "minmax" or s["hi"] <= s["lo"]:
        return s["lo"], s["hi"]
    if method == "percentile":  # cut (100 - PERCENTILE) / 2 percent on each side, as onnxruntime does
        edges, cdf = np.linspace(s["lo"], s["hi"], HIST_BINS + 1), np.cumsum(s["hist"]) / s["hist"].sum()
        tail = (100.0 - PERCENTILE) / 200.0
        return float(edges[np.searchsorted(cdf, tail)]), float(edges[np.searchsorted(cdf, 1 - tail) + 1])
    keep = s["hist"] > 0  # "mse": below, bin centres x with counts n, and candidate ranges
    x = (s["lo"] + (np.arange(HIST_BINS) + 0.5) * (s["hi"] - s["lo"]) / HIST_BINS)[keep]
    n, lo, hi = s["hist"][keep].astype(np.float64), min(s["lo"], 0.0), max(s["hi"], 0.0)  # uint8 holds zero
    grid = np.linspace(0.02, 1.0, 50)  # candidate ends, as fractions of the observed min / max
    cand_lo, cand_hi = (a.ravel() for a in np.meshgrid(lo * grid if lo < 0 else [0.0], hi * grid))
    scale = (cand_hi - cand_lo) / 255.0
    zp, err = np.round(-cand_lo / scale), np.empty(len(scale))
    for i in range(0, len(scale), 256):  # chunks of (256, bins) bound the memory
        sc, z = scale[i:i + 256, None], zp[i:i + 256, None]
        err[i:i + 256] = ((x - (np.clip(np.round(x / sc) + z, 0, 255) - z) * sc) ** 2 * n).sum(axis=1)
    return float(cand_lo[err.argmin()]), float(cand_hi[err.argmin()])


def _quantize_weights(model, lin: dict, per_channel: bool, excluded: set, adaround: bool, correct: bool) -> dict:
    """Put each Conv/Gemm weight on its int8 grid (the scale quantize_static will compute) and correct its bias
    for the output mean shift that causes. Excluded nodes keep their fp32 weights."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses = Counter(t for n in model.graph.node for t in n.input)
    done = {"layers": 0, "searched": 0, "corrected": 0}
    for node in model.graph.node:
        s, attrs = lin.get(node.name), _attrs(node)
        if s is None or node.name in excluded:
            continue
        flip = node.op_type == "Gemm" and not attrs.get("transB", 0)
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        w = w.T if flip else w  # (out, ...): the channel axis first, as for Conv
        w2 = w.reshape(len(w), -1)
        absmax = np.abs(w2).max(axis=1, keepdims=True) if per_channel else np.abs(w2).max(keepdims=True)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0)
        q = np.clip(np.round(w2 / scale), -127, 127)
        if adaround and s["n"] >= 4 * w2.shape[1]:  # enough samples for the covariance to mean something
            cov = s["cov"].astype(np.float64) / s["n"]
            cov += 0.01 * np.trace(cov, axis1=1, axis2=2)[:, None, None] / cov.shape[1] * np.eye(cov.shape[1])
            q = _greedy_round(w2 / scale, q, cov)
            done["searched"] += 1
        wq = (q * scale).reshape(w.shape)
        if correct and (len(node.input) > 2 and node.input[2] in inits or node.op_type == "Conv"):
            shift = _output_mean(node, attrs, w - wq, s["mean"])  # E[W x] - E[Wq x], linear in E[x]
            shift /= attrs.get("alpha", 1.0) * attrs.get("beta", 1.0) if node.op_type == "Gemm" else 1.0
            bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.zeros(len(wq))
            _set_input(model, inits, uses, node, 2, (bias + shift.reshape(-1)).astype(np.float32))
            done["corrected"] += 1
        _set_input(model, inits, uses, node, 1, (wq.T if flip else wq).astype(np.float32))
        done["layers"] += 1
    return done


def _set_input(model, inits: dict, uses: dict, node, i: int, value: np.ndarray) -> None:
    """Set node input i to the constant `value`. An initializer other nodes also read is copied first: the
    optimiser shares equal constants, such as the zero biases of freshly initialised layers."""
    from onnx import numpy_helper

    if i >= len(node.input) or uses.get(node.input[i], 0) > 1:
        if i < len(node.input):
            uses[node.input[i]] -= 1
            node.input[i] = f"{node.name}/input{i}"
        else:
            node.input.append(f"{node.name}/input{i}")
        inits[node.input[i]] = model.graph.initializer.add()
    inits[node.input[i]].CopyFrom(numpy_helper.from_array(value, node.input[i]))


def _greedy_round(v: np.ndarray, q: np.ndarray, cov: np.ndarray, sweeps: int = 2) -> np.ndarray:
    """Move weights to their other neighbouring int8 level while that lowers each channel's output error
    (q - v)^T cov (q - v). v: weights in units of their scale, (out, fan_in); cov: (groups, fan_in, fan_in),
    the output channels being split evenly and in order between the groups."""
    groups, fan_in = cov.shape[:2]
    v, q = v.reshape(groups, -1, fan_in), q.reshape(groups, -1, fan_in).copy()
    r = q - v
    g = np.einsum("gkj,gmj->gmk", cov, r)  # half the gradient of the error
    diag = np.diagonal(cov, axis1=1, axis2=2)[:, None, :]
    movable = np.abs(v) < 126.5  # a channel's largest weight sets its scale: it stays where it is
    for _ in range(sweeps):
        for i in range(fan_in):
            d = -np.sign(r[..., i]) * movable[..., i]  # towards the other neighbour of v
            d *= (2 * d * g[..., i] + diag[..., i] < 0) & (np.abs(q[..., i] + d) <= 127)
            if d.any():
                q[..., i] += d
                r[..., i] += d
                g += d[..., None] * cov[:, None, :, i]
    return q.reshape(-1, fan_in)


def _output_mean(node, attrs: dict, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-channel output mean of a bias-free Conv (w: OIHW) or Gemm (w: out x in) on the mean input x."""
    import torch

    if node.op_type == "Gemm":
        return w @ x.reshape(-1)
    pads = attrs.get("pads", [0, 0, 0, 0])
    xt = torch.nn.functional.pad(torch.from_numpy(x[None]), (pads[1], pads[3], pads[0], pads[2]))
    y = torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=attrs.get("strides", 1),
                                   dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1))
    return y.mean(dim=(0, 2, 3)).numpy()


def _quantize_static(src: Path, dst: Path, calib, ranges: dict | None, per_channel: bool, exclude: list,
                     float_gemm: bool):
    """onnxruntime quantize_static, QDQ, U8S8, with `ranges` ({tensor: (lo, hi)}, passed as a calibration
    cache so they are used unchanged), or with onnxruntime's Entropy calibrator when ranges is None.
    float_gemm: Gemm outputs are not re-quantized; onnxruntime's QGemm then writes float directly, which
    spares the classifier's scores a rounding to 256 levels."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = _batches(onnx.load(str(src)), calib)

        def get_next(self):
            return next(self.feeds, None)

    cache, own = dst.with_suffix(".ranges.json"), ranges is not None
    if own:
        data = {t: TensorData(lowest=np.float32(a), highest=np.float32(b)) for t, (a, b) in ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress; keep stdout for the CLI
        quantize_static(str(src), str(dst), None if own else Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax if own else CalibrationMethod.Entropy,
                        nodes_to_exclude=exclude, calibration_cache_path=str(cache) if own else None,
                        extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"] if float_gemm else []})


def _atomic_write(data: bytes, dst: Path) -> None:
    """Write via a temporary file in dst's folder, then rename, so readers never see half a model."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

