"""TFLite through onnx2tf, the design's converter: fp32, fp16 (weights), and full-integer int8
(the tflite-converter quantizer) with float or int8 input/output.

onnx2tf only builds the Keras graph here (`disable_model_save=True`); one TFLiteConverter run
then writes just the variant asked for, from a function whose signature names every input and
output as the model does. onnx2tf lays out tensors of rank 3 and more channels-last (NCHW ->
NHWC, NCL -> NLC); each input's and output's layout is read off the converted graph (and, where
its shape cannot tell, off its values against onnxruntime's), recorded in the manifest, and
undone by the runners. Conversion runs in a child process (`python -m edge.targets.tflite`),
which keeps TensorFlow's threads and memory out of the build process, in a scratch folder that
holds the sample file onnx2tf would otherwise download, so it runs offline."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge.errors import ConversionError, UserError
from edge.runner import Runner, quiet_native_stderr
from edge.targets.base import ExportContext, Exported, Target, io_specs, pkg_version, register_target
from edge.tensors import TensorSpec, channels_last, default_layout

# onnx2tf reads this file from its working directory for a test inference; absent, it downloads it.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def interpreter_class():
    """The TFLite interpreter: ai-edge-litert, else tflite-runtime, else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        raise UserError("running .tflite files needs a TFLite interpreter; install it with: "
                        "pip install ai-edge-litert") from None


def interpreter(path: Path, threads: int | None = None, builtin: bool = False, **kw):
    """A TFLite interpreter with its tensors allocated (XNNPACK's start-up line kept off the terminal)."""
    cls, _ = interpreter_class()
    if builtin:
        mod = __import__(cls.__module__, fromlist=["OpResolverType"])
        kw["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with quiet_native_stderr():
        it = cls(model_path=str(path), num_threads=threads, **kw)
        it.allocate_tensors()
    return it


class TFLiteRunner(Runner):
    def __init__(self, path: Path, inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None,
                 threads: int | None = None):
        _, self.runtime = interpreter_class()
        try:
            self.interp = interpreter(path, threads)
        except Exception as e:  # noqa: BLE001 - the interpreters raise ValueError or RuntimeError
            if "XNNPACK" not in str(e):
                raise UserError(f"{path} is not a loadable TFLite model: {_first(e)}") from None
            # XNNPACK refuses some int8 graphs (quantization scales outside the ranges its
            # kernels accept); TFLite's built-in kernels run them. Recorded in the runtime name.
            self.interp = interpreter(path, threads, builtin=True)
            self.runtime += " (built-in kernels: XNNPACK refused the graph)"
        ins = {d["name"]: d for d in self.interp.get_input_details()}
        outs = {d["name"]: d for d in self.interp.get_output_details()}
        super().__init__(inputs or [_declared(d) for d in ins.values()], outputs or [_declared(d) for d in outs.values()])
        self._in = [ins[t.tensor]["index"] if t.tensor in ins else self.interp.get_input_details()[k]["index"]
                    for k, t in enumerate(self.inputs)]
        self._out = [outs[t.tensor]["index"] if t.tensor in outs else self.interp.get_output_details()[k]["index"]
                     for k, t in enumerate(self.outputs)]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for t, index in zip(self.inputs, self._in):
            self.interp.set_tensor(index, feeds[t.name])
        self.interp.invoke()
        return [self.interp.get_tensor(index) for index in self._out]


def _declared(d: dict) -> TensorSpec:
    """A tensor as the interpreter declares it (an artifact without a manifest)."""
    shape = tuple(int(s) for s in d["shape"])
    scale, zp = d["quantization"]
    quant = np.dtype(d["dtype"]).kind in "iu" and scale
    return TensorSpec(d["name"], shape, np.dtype(d["dtype"]).name, None, shape, None,
                      float(scale) if quant else None, int(zp) if quant else None, d["name"])


class TFLite(Target):
    name = "tflite"
    suffix = ".tflite"
    precisions = ("fp32", "fp16", "int8")
    runtime = "TFLite interpreter (ai-edge-litert / tflite-runtime)"
    runner_backend = "tflite"
    quantizer = "tflite-converter"
    requires = (("onnx2tf", "onnx2tf"), ("tensorflow", "tensorflow"), ("onnxsim", "onnxsim"),
                ("onnxruntime", "onnxruntime"))
    extra = "tflite"
    unsupported = {}
    float_fallback = True  # int8 ops can stay in float (--max-drop), via the converter's denylist

    def available(self) -> str | None:
        missing = self.missing()
        if not missing:
            return None
        return (f"needs {', '.join(missing)}, not installed; install with: pip install 'edge[tflite]' "
                "(onnx2tf with --no-deps, see README)")

    def quantize(self, ctx: ExportContext):
        """int8: the converter's settings and its representative dataset (the calibration samples)."""
        q = self.get_quantizer()
        settings = q.prepare(ctx.io, ctx.keep_float)
        work = (ctx.workdir / "tflite").resolve()
        work.mkdir(exist_ok=True)
        np.savez(work / "calib.npz", **ctx.calib.arrays)  # the model's layout; the converter's process lays it out
        q.calibrate(settings, str(work / "calib.npz"))
        return settings

    def export(self, ctx: ExportContext, precision: str, out: Path, prepared=None) -> Exported:
        from edge.progress import step

        work = (ctx.workdir / "tflite").resolve()
        work.mkdir(exist_ok=True)
        onnx_path = _edge_padded_maxpool(ctx.onnx_fp32(), work / "model.onnx")
        _write_sample(work, ctx)
        np.savez(work / "example.npz", **ctx.example)
        job = {"onnx": str(onnx_path), "out": str(out.resolve()), "precision": precision,
               "inputs": [i.name for i in ctx.spec.inputs], "outputs": [o.name for o in ctx.spec.outputs],
               "example": str(work / "example.npz"), "result": str(work / "result.json"), "quant": None}
        if precision == "int8":
            job["quant"] = prepared.to_json()
        (work / "job.json").write_text(json.dumps(job))
        with step(f"tflite {precision}: onnx2tf + TFLite converter"):
            proc = subprocess.run([sys.executable, "-m", "edge.targets.tflite", str(work / "job.json")],
                                  cwd=work, capture_output=True, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        logging.getLogger("edge").debug("onnx2tf/TFLite conversion log:\n%s", proc.stdout + proc.stderr)
        if proc.returncode < 0:
            raise ConversionError(f"the TFLite interpreter crashed (signal {-proc.returncode}) running the "
                                  f"converted {precision} model; try another --calib-method or precision")
        if proc.returncode != 0 or not out.exists():
            raise _conversion_error(proc.stdout + proc.stderr)  # stderr last: the error the process ended with
        result = json.loads((work / "result.json").read_text())
        return Exported(out, _specs(result["inputs"], ctx.model_inputs()), _specs(result["outputs"], ctx.model_outputs()), {
            "converter": "onnx2tf (Keras graph) + tf.lite.TFLiteConverter",
            "quantization": {"mode": "full-integer" if precision == "int8" else precision,
                             "quantizer": self.quantizer, "per_channel": True, "method": "minmax",
                             "calibration": "TFLite converter (min/max per tensor over the calibration set)",
                             "io": ctx.io, "float_ops": list(ctx.keep_float)} if precision == "int8"
            else {"mode": precision},
            "layouts": {t["name"]: ("channels-last" if t["perm"] else "as the model") for t in
                        result["inputs"] + result["outputs"]},
            "onnx2tf_strict_mode": result["onnx2tf_strict_mode"],
        })

    def load(self, path: Path, manifest: dict | None = None, threads: int | None = None) -> TFLiteRunner:
        return TFLiteRunner(path, io_specs(manifest, "inputs"), io_specs(manifest, "outputs"), threads)

    def versions(self) -> dict[str, str | None]:
        _, name = interpreter_class()
        interp = {"ai-edge-litert": pkg_version("ai-edge-litert"), "tflite-runtime": pkg_version("tflite-runtime"),
                  "tensorflow": pkg_version("tensorflow")}[name]
        return {"onnx2tf": pkg_version("onnx2tf"), "tensorflow": pkg_version("tensorflow"),
                "tflite_interpreter": f"{name} {interp}"}

    def finish(self, exported: Exported, spec, labels: Path | None) -> dict:
        """An image classifier carries its normalisation and labels as TFLite Model Metadata, which
        the TFLite Task Library and MediaPipe read (targets/tflite_metadata.py)."""
        from edge.targets.tflite_metadata import write_metadata

        if spec.image is None or len(spec.inputs) != 1 or len(spec.outputs) != 1 or labels is None:
            return {"metadata": {"written": False, "reason": "TFLite Model Metadata is written for image "
                                 "classifiers (one image in, one vector of class scores out)"}}
        pre = spec.image.source.preprocess
        return {"metadata": write_metadata(exported.path, labels=labels.read_text().splitlines(),
                                           mean=list(pre.mean), std=list(pre.std), input_name=spec.inputs[0].name,
                                           output_name=spec.outputs[0].name, description=spec.description)}

    def delegation(self, exported: Exported) -> dict:
        return xnnpack_partitions(interpreter(exported.path, threads=1)._get_ops_details())

    def layer_outputs(self, path: Path, model, x, manifest: dict | None = None):
        from edge.quantize.sensitivity import tflite_layers

        return tflite_layers(path, model, x, manifest)


# Why an op stays outside XNNPACK, where edge knows; any other op: XNNPACK has no kernel for it
# at that type or with those parameters.
OUTSIDE_WHY = {
    "MIRROR_PAD": "edge padding before a max-pool whose input can be negative (after a ReLU, edge pads "
                  "with zeros, which XNNPACK runs); XNNPACK has no mirror pad",
}


def xnnpack_partitions(ops: list[dict]) -> dict:
    """XNNPACK's partitions of a TFLite graph, from the interpreter's node list (the model's ops,
    then one DELEGATE node per partition): an op belongs to the partition whose outputs it feeds
    without passing through that partition's inputs. {"delegate", "partitions", "ops", "delegated",
    "outside": {op: count}, "split": {op: why}}."""
    from collections import Counter

    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    regular = {int(o["index"]): o for o in ops if o["op_name"] != "DELEGATE"}
    producer = {int(t): i for i, o in regular.items() for t in o["outputs"]}
    covered: set[int] = set()
    for d in delegates:
        inputs = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            p = producer.get(t)
            if t < 0 or t in inputs or p is None or p in covered:
                continue
            covered.add(p)
            stack.extend(int(x) for x in regular[p]["inputs"])
    outside = Counter(o["op_name"] for i, o in sorted(regular.items()) if i not in covered)
    split = {op: OUTSIDE_WHY.get(op, "XNNPACK has no kernel for it here; it runs on TFLite's reference kernels")
             for op in outside} if len(delegates) != 1 or outside else {}
    return {"delegate": "XNNPACK", "partitions": len(delegates), "ops": len(regular), "delegated": len(covered),
            "outside": dict(outside), "split": split}


def _conversion_error(log: str) -> Exception:
    """The converter's failure in one line: the last exception it raised (and the ONNX op, when
    onnx2tf names the op that raised it), without colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.splitlines()]
    lines = [ln for ln in lines if ln]
    if any("No space left on device" in ln for ln in lines):
        return OSError(28, "No space left on device")
    errors = [ln for ln in lines if re.search(r"\b\w*(Error|Exception): ", ln) and not ln.startswith("File ")]
    why = errors[-1] if errors else (lines[-1] if lines else "no output")
    why = re.sub(r"^(\w+\.)+(?=\w+(Error|Exception):)", "", why)  # tensorflow.lite...ConverterError -> ConverterError
    ops = [ln.split("onnx_op_name:", 1)[1].strip() for ln in lines if "onnx_op_name:" in ln]
    op = ops[-1] if ops and errors and sum(errors[-1] in ln for ln in lines) > 1 else None
    return ConversionError(f"onnx2tf/TFLite conversion failed{f' at ONNX op {op}' if op else ''}: {why[:240]} "
                           "(rerun with --debug for the converter log)")


def _specs(found: list[dict], model: list[TensorSpec]) -> list[TensorSpec]:
    """The artifact's tensors (from the conversion) tied to the model's, with both layouts."""
    out = []
    for t, m in zip(found, model):
        mlayout = m.model_layout or (default_layout(len(m.model_shape)) if t["perm"] else None)
        scale, zp = t["quantization"]
        quant = np.dtype(t["dtype"]).kind in "iu" and scale
        out.append(TensorSpec(m.name, tuple(t["shape"]), t["dtype"], channels_last(mlayout) if t["perm"] else mlayout,
                              tuple(m.model_shape), mlayout, float(scale) if quant else None,
                              int(zp) if quant else None, t["tensor"]))
    return out


def _first(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else e.__class__.__name__


def _edge_padded_maxpool(src: Path, dst: Path) -> Path:
    """Rewrite each padded MaxPool as a Pad followed by an unpadded MaxPool, padded so that XNNPACK
    keeps it whole where it can.

    onnx2tf pads a MaxPool with float32's lowest value; int8 calibration then sees -3.4e38 and
    gives the tensor a scale of about 1e36, which crashes the TFLite kernels (ResNet18 and
    ShuffleNetV2 did here). After a ReLU (or a Clip at 0 or above) the input is never negative, so
    zeros give the same maximum (every window covers at least one real value, which is >= 0) and
    become a PAD that XNNPACK runs. Elsewhere edge padding gives the same maximum (PyTorch allows
    pad <= k/2, so every window that reaches into the padding also covers the border value it
    replicates), but it becomes MIRROR_PAD, which XNNPACK has not: the graph splits (the manifest's
    delegation says so)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    producers = {o: n for n in model.graph.node for o in n.output}
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attrs.get("pads", []))
        if (node.op_type != "MaxPool" or not any(pads) or attrs.get("ceil_mode", 0)
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(pads) != 4):
            nodes.append(node)
            continue
        name = f"{node.name or node.output[0]}_edge_pad"
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), f"{name}_pads"))
        mode = "constant" if _nonnegative(producers.get(node.input[0]), constants) else "edge"
        nodes.append(helper.make_node("Pad", [node.input[0], f"{name}_pads"], [f"{name}_out"], name=name, mode=mode))
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items() if k != "pads")
        node.input[0] = f"{name}_out"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def _nonnegative(node, constants: dict) -> bool:
    """Is this node's output never negative: a Relu, or a Clip whose lower bound is >= 0?"""
    if node is None:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip":
        from onnx import helper

        lo = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "min"), None)  # opset < 11
        if len(node.input) > 1 and node.input[1]:
            lo = constants.get(node.input[1])
        return lo is not None and np.size(lo) == 1 and float(np.asarray(lo).reshape(())) >= 0
    return False


def _write_sample(work: Path, ctx: ExportContext) -> None:
    """onnx2tf's test inference wants 20 RGB images, 128x128, NHWC in [0, 1]; give it ours (or
    zeros for a model without an image input)."""
    import torch
    import torch.nn.functional as F

    image = ctx.spec.image
    if image is None:
        _save_npy(work / ONNX2TF_SAMPLE, np.zeros((20, 128, 128, 3), np.float32))
        return
    src = ctx.calib.arrays[image.name] if ctx.calib is not None else ctx.example[image.name]
    x = src[np.arange(20) % len(src)].transpose(0, 2, 3, 1)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    t = F.interpolate(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), size=(128, 128),
                      mode="bilinear", align_corners=False)
    _save_npy(work / ONNX2TF_SAMPLE, t.numpy().transpose(0, 2, 3, 1).astype(np.float32))


def _save_npy(path: Path, a: np.ndarray) -> None:
    """np.save through Python's file writing: numpy's own (tofile) reports a full disk as an OSError
    without an errno ("problem writing element"), which cannot be told from other failures."""
    buf = io.BytesIO()
    np.save(buf, a)
    path.write_bytes(buf.getvalue())


# ---------------------------------------------------------------- the conversion process

def _perm(kshape: tuple, mshape: tuple) -> bool | None:
    """Is the converted tensor channels-last? True/False, or None when its shape cannot tell."""
    cl = (mshape[0], *mshape[2:], mshape[1]) if len(mshape) >= 3 else mshape
    same, last = tuple(kshape) == tuple(mshape), len(mshape) >= 3 and tuple(kshape) == tuple(cl)
    if same and last:
        return None
    if not (same or last):
        raise ConversionError(f"onnx2tf gave a tensor of shape {tuple(kshape)} for one of shape {tuple(mshape)}")
    return last


def _to_cl(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, *range(2, a.ndim), 1))


def _convert(job: dict) -> None:
    """Runs in the child process: ONNX -> Keras (onnx2tf) -> one .tflite variant."""
    import onnx
    import onnx2tf
    import onnxruntime as ort
    import tensorflow as tf

    graph = onnx.load(job["onnx"]).graph
    mshape = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.output]}
    strict = True
    try:
        model = onnx2tf.convert(input_onnx_file_path=job["onnx"], output_folder_path="tf",
                                disable_model_save=True, non_verbose=True)
    except (Exception, SystemExit):  # noqa: BLE001 - onnx2tf exits or raises; its accuracy correction failed
        # onnx2tf's "strict" accuracy correction of elementwise ops tries transpositions against
        # onnxruntime's values and fails on some constant operands (the scaled attention scores of a
        # transformer: "Output tensors of a Functional model must be the output of a TensorFlow
        # Layer"). Without it the conversion goes through; edge's own parity check judges the result.
        strict = False
        model = onnx2tf.convert(input_onnx_file_path=job["onnx"], output_folder_path="tf",
                                disable_model_save=True, non_verbose=True, disable_strict_mode=True)
    # Inputs: onnx2tf lays out every input of rank 3 or more channels-last (an ambiguous shape too).
    in_perm = {n: (len(mshape[n]) >= 3 if p is None else p) for n, t in zip(job["inputs"], model.inputs)
               for p in [_perm(tuple(t.shape), mshape[n])]}
    # A frozen concrete function, not from_keras_model: the Keras route serialises every layer's
    # config to a SavedModel first, which took 28 s of a 30 s conversion of MobileNetV2 here.
    sig = [tf.TensorSpec(t.shape, t.dtype, name) for t, name in zip(model.inputs, job["inputs"])]
    names = job["outputs"]

    def forward(*xs):
        ys = model(list(xs) if len(xs) > 1 else xs[0])
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        return {n: y for n, y in zip(names, ys)}

    fn = tf.function(forward, input_signature=sig)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if job["precision"] == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    if job["quant"] is not None:
        from edge.quantize import QUANTIZERS

        settings = dict(job["quant"])
        calib = np.load(settings["calib"])
        laid_out = Path(settings["calib"]).with_name("calib_converter.npz")
        np.savez(laid_out, **{n: _to_cl(calib[n]) if in_perm[n] else calib[n] for n in job["inputs"]})
        settings["calib"] = str(laid_out)
        blob = QUANTIZERS.get("tflite-converter").convert(conv, settings, job["inputs"])
    else:
        blob = conv.convert()
    tmp = job["out"] + ".partial"
    with open(tmp, "wb") as f:
        f.write(blob)
    # Run it once here: a TFLite kernel that rejects the graph aborts the whole process, and this
    # child is the one to lose, not the build. Its outputs against onnxruntime's tell the layout of
    # an output whose shape cannot.
    example = np.load(job["example"])
    it = interpreter(Path(tmp))
    ins = _bind_inputs(it, job["inputs"])
    for n in job["inputs"]:
        x = _to_cl(example[n]) if in_perm[n] else example[n]
        scale, zp = ins[n]["quantization"]
        if np.dtype(ins[n]["dtype"]).kind in "iu" and x.dtype.kind == "f" and scale:
            info = np.iinfo(ins[n]["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max)
        it.set_tensor(ins[n]["index"], x.astype(ins[n]["dtype"]))
    it.invoke()
    ref = dict(zip(names, ort.InferenceSession(job["onnx"], providers=["CPUExecutionProvider"]).run(
        names, {n: example[n] for n in job["inputs"]})))
    result = {"onnx2tf_strict_mode": strict, "inputs": [_entry(n, ins[n], in_perm[n]) for n in job["inputs"]],
              "outputs": [_entry(n, d, p) for n, (d, p) in _bind_outputs(it, names, ref, mshape).items()]}
    Path(job["result"]).write_text(json.dumps(result))
    os.replace(tmp, job["out"])


def _bind_inputs(it, names: list[str]) -> dict[str, dict]:
    """Each model input's interpreter tensor: by the signature (inputs named as the model's), else by
    a tensor name that carries the model's name, else in order."""
    details = it.get_input_details()
    sig = it.get_signature_list()
    if len(sig) == 1:
        runner_in = it.get_signature_runner().get_input_details()
        by_name = {d["name"]: d for d in details}
        if set(runner_in) == set(names):
            return {n: by_name[runner_in[n]["name"]] for n in names}
    found = {n: next((d for d in details if d["name"].split(":")[0].endswith(n)), None) for n in names}
    if all(found.values()) and len({d["index"] for d in found.values()}) == len(names):
        return found
    return dict(zip(names, details))


def _bind_outputs(it, names: list[str], ref: dict, mshape: dict) -> dict[str, tuple[dict, bool]]:
    """Each model output's interpreter tensor and whether it is channels-last: the tensor whose shape
    fits (as it is, or channels-last) and, among those, whose values are closest to onnxruntime's.
    Neither the signature (absent from some conversions) nor the tensor order is relied on."""
    left = list(it.get_output_details())
    bound = {}
    for n in names:
        best = None
        for d in left:
            try:
                p = _perm(tuple(d["shape"]), mshape[n])
            except ConversionError:
                continue
            y = it.get_tensor(d["index"]).astype(np.float32)
            scale, zp = d["quantization"]
            if np.dtype(d["dtype"]).kind in "iu" and scale:
                y = (y - zp) * scale
            for cl in ([True, False] if p is None else [p]):
                score = _cos(_to_cl(ref[n]) if cl else ref[n], y)
                if best is None or score > best[0]:
                    best = (score, d, cl)
        if best is None:
            raise ConversionError(f"the converted model has no output that fits {n} {tuple(mshape[n])}")
        bound[n] = (best[1], best[2])
        left.remove(best[1])
    return bound


def _entry(name: str, d: dict, perm: bool) -> dict:
    scale, zp = d["quantization"]
    return {"name": name, "tensor": d["name"], "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name, "quantization": [float(scale), int(zp)], "perm": bool(perm)}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


if __name__ == "__main__":
    _convert(json.loads(Path(sys.argv[1]).read_text()))
else:
    register_target(TFLite())
