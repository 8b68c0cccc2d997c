"""Per-layer comparison of an artifact with its PyTorch model: each layer's output in the runtime
that runs the artifact against the same nn.Module's output in PyTorch, as an SQNR in dB
(10·log10(‖fp32‖² / ‖artifact − fp32‖²); int8 layers usually sit between 20 and 40 dB, fp32
artifacts far above 60).

Where the layers come from:
- ONNX: every float activation becomes a graph output (for a QDQ int8 graph, the dequantized
  output of each activation's QuantizeLinear: the value the int8 kernels pass on). The legacy
  exporter names tensors after the module scope (`/blocks/blocks.0/conv/Conv_output_0`), so
  each tensor names its nn.Module path exactly.
- TFLite: every op's output, kept with the interpreter's `experimental_preserve_all_tensors`
  and the built-in kernels (a delegate would hide them), dequantized. TFLite tensors carry TF
  op names, so each is matched to the module (same shape, after NHWC -> NCHW) whose PyTorch
  output it resembles most (cosine), in execution order.
- TorchScript-mobile: the lite interpreter exposes no intermediate tensors; only the output.

The first layer whose SQNR falls below a threshold is where the artifact parts from PyTorch;
the local drop (a layer's SQNR minus that of its input layer) ranks layers by the error they
add themselves, which is what `--max-drop` uses to pick the layers to keep in float.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edge.parity import sqnr_db  # noqa: F401  (re-exported: the per-layer figure)

MIN_MATCH_COSINE = 0.5  # below this, a TFLite tensor matches no module
_SCOPE = re.compile(r"^(?P<scope>/.*)?/(?P<op>[A-Za-z0-9]+)(?:_\d+)?_output_\d+$")


@dataclass
class Layer:
    module: str  # nn.Module path ("" for an op in the model's own forward)
    op: str  # the runtime's op or tensor that produced it
    shape: tuple
    sqnr_db: float
    cosine: float
    local_drop_db: float | None = None  # SQNR lost at this layer itself (None: the first layer)
    nodes: list[str] = field(default_factory=list)  # ONNX node names that produce it

    def to_json(self) -> dict:
        return {"module": self.module, "op": self.op, "shape": list(self.shape), "sqnr_db": round(self.sqnr_db, 2),
                "cosine": round(self.cosine, 6),
                "local_drop_db": None if self.local_drop_db is None else round(self.local_drop_db, 2),
                "nodes": self.nodes}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    d = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / d) if d > 0 else (1.0 if not a.any() and not b.any() else 0.0)


# ---------------------------------------------------------------- PyTorch

def _args(x) -> list:
    """The model's positional inputs: one array, or one per input name in input order."""
    arrays = list(x.values()) if isinstance(x, dict) else [np.asarray(x, dtype=np.float32)]
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def module_outputs(model: nn.Module, x) -> dict[str, np.ndarray]:
    """Every submodule's output on x (one array, or one per input name), keyed by module path, in
    execution order (a module called twice keeps its first call)."""
    outs: dict[str, np.ndarray] = {}
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(m, inp, out, name=name):
            if name not in outs and isinstance(out, torch.Tensor):
                outs[name] = out.detach().float().numpy().copy()
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(*_args(x))
    finally:
        for h in handles:
            h.remove()
    return outs


# ---------------------------------------------------------------- ONNX

def onnx_module_path(tensor: str) -> tuple[str, str] | None:
    """('blocks.0.conv', 'Conv') from '/blocks/blocks.0/conv/Conv_output_0'; None for other names."""
    m = _SCOPE.match(tensor)
    if not m:
        return None
    # Scope components are attribute names, except that a container's child appears with its
    # parent's name: /_blocks/_blocks.0/_act1 is the module _blocks.0._act1.
    path: list[str] = []
    for part in (s for s in (m.group("scope") or "").split("/") if s):
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path), m.group("op")


def onnx_layer_outputs(path: Path, x, disabled_optimizers: tuple[str, ...] = ()
                       ) -> dict[str, tuple[np.ndarray, list[str]]]:
    """{float tensor name: (its value on x, producing node names)} for every activation of an ONNX
    file, the dequantized value for a QDQ graph, keyed by the original float tensor's name."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    dequantizer = {n.input[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    inits = {i.name for i in g.initializer}
    wanted: dict[str, tuple[str, list[str]]] = {}  # graph output to add -> (float tensor name, nodes)
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            deq, src = dequantizer.get(n.output[0]), producer.get(n.input[0])
            if deq is not None and src is not None:
                wanted[deq.output[0]] = (n.input[0], [src.name])
    if not wanted:  # a float graph: every node output
        for n in g.node:
            if n.op_type not in ("Constant", "QuantizeLinear", "DequantizeLinear"):
                for o in n.output:
                    wanted[o] = (o, [n.name])
    existing = {o.name for o in g.output}
    for name in wanted:
        if name not in existing:
            g.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))
    names = [o.name for o in sess.get_outputs() if o.name in wanted]
    feeds = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
    n = len(next(iter(feeds.values())))
    per_sample = [sess.run(names, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
    return {wanted[n][0]: (np.concatenate([s[k] for s in per_sample]), wanted[n][1]) for k, n in enumerate(names)}


def onnx_layers(path: Path, model: nn.Module, x, manifest: dict | None = None) -> list[Layer]:
    from edge.targets.onnx import disabled_optimizers

    found = []
    for tensor, (value, nodes) in onnx_layer_outputs(path, x, disabled_optimizers(manifest)).items():
        parsed = onnx_module_path(tensor)
        if parsed is None or not parsed[0]:
            continue  # an op in the model's own forward (x + y): no module to compare with
        found.append((tensor, parsed[1], value, nodes, parsed[0]))
    return match(module_outputs(model, x), found)


# ---------------------------------------------------------------- ExecuTorch (PT2E)

def pt2e_layers(converted, model: nn.Module, x) -> list[Layer]:
    """Per-layer outputs of the int8 graph PT2E converted (its quantize/dequantize pairs run in
    PyTorch: the arithmetic the XNNPACK delegate reproduces; ExecuTorch does not expose a
    delegate's intermediate tensors). Each op's output is taken after its quantize/dequantize
    pair where it has one (the value the int8 kernels pass on), named by the module it came from
    (torch.export's nn_module_stack), whose path is also what --max-drop keeps in float."""
    values: dict[str, list[np.ndarray]] = {}
    take: dict[str, str] = {}  # node whose value to record -> the node it stands for
    for n in converted.graph.nodes:
        if n.op != "call_function" or not n.meta.get("nn_module_stack"):
            continue
        q = [u for u in n.users if str(u.target).startswith("quantized_decomposed.quantize_per_tensor")]
        dq = [d for u in q for d in u.users if str(d.target).startswith("quantized_decomposed.dequantize_per_tensor")]
        take[(dq[0] if dq else n).name] = n.name

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in take and isinstance(out, torch.Tensor):
                values.setdefault(take[n.name], []).append(out.detach().float().numpy().copy())
            return out

    args = _args(x)
    with torch.no_grad():
        for i in range(len(args[0])):
            Recorder(converted).run(*[a[i:i + 1] for a in args])
    found = []
    for n in converted.graph.nodes:
        if n.name in values:
            path = _pt2e_module(n)
            if path:
                found.append((n.name, str(n.target).split(".")[1] if "." in str(n.target) else str(n.target),
                              np.concatenate(values[n.name]), [path], path))
    return match(module_outputs(model, x), found)


def _pt2e_module(node) -> str:
    """The innermost module path of a captured node ("" for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [p for p, _ in stack.values() if p]
    return paths[-1] if paths else ""


# ---------------------------------------------------------------- TFLite

def tflite_layer_outputs(path: Path, x, manifest: dict | None = None) -> list[tuple[str, str, np.ndarray]]:
    """[(tensor name, op name, float value on x in NCHW)] for every op output, in execution order.
    `x`: one array or one per input name, in the model's layout; the manifest's input specs say
    how the artifact takes them (without one: a single NCHW image input taken NHWC)."""
    from edge.runner import to_artifact
    from edge.targets.base import io_specs
    from edge.targets.tflite import interpreter
    from edge.tensors import TensorSpec

    it = interpreter(path, builtin=True, experimental_preserve_all_tensors=True)
    details = {d["name"]: d for d in it.get_input_details()}
    specs = io_specs(manifest, "inputs")
    if specs is None:
        d = it.get_input_details()[0]
        shape = tuple(int(s) for s in d["shape"])
        scale, zp = d["quantization"]
        specs = [TensorSpec("input", shape, np.dtype(d["dtype"]).name, "NHWC", (shape[0], shape[3], shape[1], shape[2]),
                            "NCHW", scale or None, zp, d["name"])]
    feeds = x if isinstance(x, dict) else {specs[0].name: x}
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = [(op["op_name"], int(o)) for op in it._get_ops_details() for o in op["outputs"] if o >= 0]
    values: dict[int, list[np.ndarray]] = {i: [] for _, i in ops}
    for i in range(len(next(iter(feeds.values())))):
        for t in specs:
            d = details.get(t.tensor) or it.get_input_details()[specs.index(t)]
            it.set_tensor(d["index"], to_artifact(feeds[t.name][i:i + 1], t))
        it.invoke()
        for _, idx in ops:
            values[idx].append(_dequantized(it.get_tensor(idx), tensors[idx]))
    out = []
    for op, idx in ops:
        v = np.concatenate(values[idx])
        if v.ndim == 4:
            v = v.transpose(0, 3, 1, 2)
        out.append((tensors[idx]["name"], op, v))
    return out


def _dequantized(v: np.ndarray, t: dict) -> np.ndarray:
    if v.dtype == np.float32:
        return v.copy()
    scale, zp = t["quantization"]
    return (v.astype(np.float32) - zp) * (scale or 1.0)


WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
PLUMBING_OPS = ("PAD", "PADV2", "RESHAPE", "QUANTIZE", "DEQUANTIZE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS")


def tflite_layers(path: Path, model: nn.Module, x, manifest: dict | None = None) -> list[Layer]:
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))]
    found = [(t, op, v, [t], None) for t, op, v in tflite_layer_outputs(path, x, manifest) if op not in PLUMBING_OPS]
    return match(module_outputs(model, x), found, weighted)


def match(ref: dict[str, np.ndarray], found: list[tuple], weighted: list[str] | None = None) -> list[Layer]:
    """Pair each runtime tensor (name, op, value, nodes, scope hint) with the module whose
    PyTorch output it is, never before the previous match (both run in order):
    - with a scope hint (ONNX names): that module, its siblings or its parent, the one of the
      same shape whose output it resembles most (a fused Conv+BN output carries the Conv's name
      but is the BN's output);
    - a TFLite conv/fully-connected op: the next nn.Conv2d/nn.Linear and the modules after it
      up to the following one (its batch norm and activation, fused into the op), again by
      resemblance, however poor: a broken layer must still be named;
    - any other op: the module of the same shape it resembles most, if the cosine is >= 0.5.
    Ties go to the innermost module (a container returns its last child's output). One layer
    per module: the tensor that matches it best."""
    names = list(ref)
    order = {n: i for i, n in enumerate(names)}
    leaf = {n: not any(o.startswith(n + ".") for o in names) for n in names}
    weighted = [w for w in (weighted or []) if w in order]
    best: dict[str, Layer] = {}
    start = 0
    for tensor, op, value, nodes, hint in found:
        floor = MIN_MATCH_COSINE
        if hint is not None:
            parent = hint.rsplit(".", 1)[0] if "." in hint else hint
            allowed = {n for n in names if n == hint or n == parent or n.startswith(parent + ".")}
            floor = -1.0
        elif op in WEIGHTED_OPS and weighted:
            nxt = [w for w in weighted if order[w] >= start and ref[w].shape[1:2] == value.shape[1:2]]
            if not nxt:
                continue
            lo = order[nxt[0]]
            after = [order[w] for w in weighted if order[w] > lo]
            hi = after[0] if after else len(names)
            allowed = set(names[lo:hi])
            floor = -1.0
        else:
            allowed = set(names)
        cands = [(i, n) for i, n in enumerate(names) if i >= start and n in allowed and ref[n].shape == value.shape]
        if not cands:
            continue
        cos, _, i, name = max((_cos(ref[n], value), leaf[n], i, n) for i, n in cands)
        if cos < floor:
            continue
        layer = Layer(name, op, tuple(value.shape), sqnr_db(ref[name], value), cos, nodes=nodes)
        if name not in best or layer.cosine > best[name].cosine:
            best[name] = layer
        start = i
    return _with_local_drop(sorted(best.values(), key=lambda l: order[l.module]))


def _with_local_drop(layers: list[Layer]) -> list[Layer]:
    prev = None
    for layer in layers:
        layer.local_drop_db = None if prev is None else max(0.0, min(prev, 200.0) - min(layer.sqnr_db, 200.0))
        prev = layer.sqnr_db
    return layers


def first_parting(layers: list[Layer], threshold_db: float) -> Layer | None:
    return next((l for l in layers if l.sqnr_db < threshold_db), None)
