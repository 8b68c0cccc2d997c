"""TFLite through onnx2tf, the design's converter: fp32, fp16 (weights), and full-integer int8
with float or int8 input/output.

onnx2tf only builds the Keras graph here (`disable_model_save=True`); one TFLiteConverter run
then writes just the variant asked for, with our calibration samples as the representative
dataset. Conversion runs in a child process (`python -m edge.targets.tflite`), which keeps
TensorFlow's threads and memory out of the build process, in a scratch folder that holds the sample file onnx2tf
would otherwise download, so it runs offline."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge.errors import ConversionError, UserError
from edge.runner import run_batch1
from edge.targets.base import ExportContext, Exported, TensorSpec, check_common, pkg_version

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


class TFLiteRunner:
    def __init__(self, path: Path, threads: int | None = None):
        cls, self.runtime = interpreter_class()
        try:
            self.interp = cls(model_path=str(path), num_threads=threads)
            self.interp.allocate_tensors()
        except Exception as e:  # noqa: BLE001 - the interpreters raise ValueError or RuntimeError
            if "XNNPACK" not in str(e):
                raise UserError(f"{path} is not a loadable TFLite model: {_first(e)}") from None
            # XNNPACK refuses some int8 graphs (quantization scales outside the ranges its
            # kernels accept); TFLite's built-in kernels run them. Recorded in the runtime name.
            self.interp = self._without_xnnpack(path, threads)
            self.runtime += " (built-in kernels: XNNPACK refused the graph)"
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    @staticmethod
    def _without_xnnpack(path: Path, threads: int | None):
        cls, name = interpreter_class()
        mod = __import__(cls.__module__, fromlist=["OpResolverType"])
        interp = cls(model_path=str(path), num_threads=threads,
                     experimental_op_resolver_type=mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
        return interp

    def _one(self, x: np.ndarray) -> np.ndarray:
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        scale, zp = self.inp["quantization"]
        if self.inp["dtype"] != np.float32:
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max)
        self.interp.set_tensor(self.inp["index"], x.astype(self.inp["dtype"]))
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        scale, zp = self.out["quantization"]
        if self.out["dtype"] != np.float32:
            y = (y.astype(np.float32) - zp) * scale
        return y

    def run(self, x: np.ndarray) -> np.ndarray:
        return run_batch1(self._one, x)


class TFLite:
    name = "tflite"
    suffix = ".tflite"
    precisions = ("fp32", "fp16", "int8")
    runtime = "TFLite interpreter (ai-edge-litert / tflite-runtime)"
    runner_backend = "tflite"  # edge/device/runner.py --backend
    unsupported = {}
    float_fallback = True  # int8 ops can stay in float (--max-drop), via the converter's denylist

    def calib_methods(self) -> tuple[str, ...]:
        # The TFLite converter's calibrator records each tensor's min and max over the
        # representative dataset; it offers no other method.
        return ("minmax",)

    def check(self, precision: str, io: str, calib_method: str | None = None) -> None:
        check_common(self, precision, io, calib_method)
        import importlib.util

        for pkg in ("onnx2tf", "tensorflow", "onnxsim"):
            if importlib.util.find_spec(pkg) is None:
                _missing(pkg)

    def export(self, ctx: ExportContext, precision: str, out: Path) -> Exported:
        work = (ctx.workdir / "tflite").resolve()
        work.mkdir(exist_ok=True)
        onnx_path = _edge_padded_maxpool(ctx.onnx_fp32(), work / "model.onnx")
        _write_sample(work, ctx)
        job = {"onnx": str(onnx_path), "out": str(out.resolve()), "precision": precision, "io": ctx.io,
               "calib": None, "keep_float": list(ctx.keep_float)}
        if precision == "int8":
            np.save(work / "calib_nhwc.npy", ctx.calib.transpose(0, 2, 3, 1).astype(np.float32))
            job["calib"] = str(work / "calib_nhwc.npy")
        (work / "job.json").write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "edge.targets.tflite", str(work / "job.json")],
                              cwd=work, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        logging.getLogger("edge").debug("onnx2tf/TFLite conversion log:\n%s", proc.stdout + proc.stderr)
        if proc.returncode < 0:
            raise ConversionError(f"the TFLite interpreter crashed (signal {-proc.returncode}) running the "
                                  f"converted {precision} model; try another --calib-method or precision")
        if proc.returncode != 0 or not out.exists():
            last = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
            raise ConversionError(f"onnx2tf/TFLite conversion failed: {last[-1][:200] if last else 'no output'} "
                                  f"(rerun with --debug for the converter log)")
        runner = TFLiteRunner(out)
        i, o = runner.inp, runner.out
        return Exported(out, _spec(i, "NHWC"), _spec(o), {
            "converter": "onnx2tf (Keras graph) + tf.lite.TFLiteConverter",
            "quantization": {"mode": "full-integer" if precision == "int8" else precision,
                             "per_channel": True, "method": "minmax",
                             "calibration": "TFLite converter (min/max per tensor over the calibration set)",
                             "io": ctx.io, "float_ops": list(ctx.keep_float)} if precision == "int8"
            else {"mode": precision},
        })

    def load(self, path: Path, manifest: dict | None = None) -> TFLiteRunner:
        return TFLiteRunner(path)

    def versions(self) -> dict[str, str | None]:
        _, name = interpreter_class()
        interp = {"ai-edge-litert": pkg_version("ai-edge-litert"), "tflite-runtime": pkg_version("tflite-runtime"),
                  "tensorflow": pkg_version("tensorflow")}[name]
        return {"onnx2tf": pkg_version("onnx2tf"), "tensorflow": pkg_version("tensorflow"),
                "tflite_interpreter": f"{name} {interp}"}


def _first(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else e.__class__.__name__


def _missing(pkg: str):
    raise UserError(f"the tflite target needs the Python package '{pkg}', which is not installed; "
                    f"install it with: pip install 'edge[tflite]' (onnx2tf with --no-deps, see README)")


def _spec(d: dict, layout: str | None = None) -> TensorSpec:
    scale, zp = d["quantization"]
    quant = d["dtype"] != np.float32
    return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name, layout,
                      float(scale) if quant else None, int(zp) if quant else None)


def _edge_padded_maxpool(src: Path, dst: Path) -> Path:
    """Rewrite each padded MaxPool as an edge-mode Pad followed by an unpadded MaxPool.

    onnx2tf pads a MaxPool with float32's lowest value; int8 calibration then sees -3.4e38 and
    gives the tensor a scale of about 1e36, which crashes the TFLite kernels (ResNet18 and
    ShuffleNetV2 did here). Edge padding gives the same maximum: PyTorch allows pad <= k/2, so
    every window that reaches into the padding also covers the border value it replicates."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
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
        nodes.append(helper.make_node("Pad", [node.input[0], f"{name}_pads"], [f"{name}_out"], name=name, mode="edge"))
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items() if k != "pads")
        node.input[0] = f"{name}_out"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def _write_sample(work: Path, ctx: ExportContext) -> None:
    """onnx2tf's test inference wants 20 RGB images, 128x128, NHWC in [0, 1]; give it ours."""
    src = ctx.calib if ctx.calib is not None else np.zeros((1, *ctx.input_shape[1:]), np.float32)
    x = src[np.arange(20) % len(src)].transpose(0, 2, 3, 1)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    import torch.nn.functional as F
    import torch

    t = F.interpolate(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), size=(128, 128),
                      mode="bilinear", align_corners=False)
    np.save(work / ONNX2TF_SAMPLE, t.numpy().transpose(0, 2, 3, 1).astype(np.float32))


def _convert(job: dict) -> None:
    """Runs in the child process: ONNX -> Keras (onnx2tf) -> one .tflite variant."""
    import onnx2tf
    import tensorflow as tf

    model = onnx2tf.convert(input_onnx_file_path=job["onnx"], output_folder_path="tf",
                            disable_model_save=True, non_verbose=True)
    # A frozen concrete function, not from_keras_model: the Keras route serialises every layer's
    # config to a SavedModel first, which took 28 s of a 30 s conversion of MobileNetV2 here.
    spec = model.inputs[0]
    fn = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec(spec.shape, tf.float32, "input")])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if job["precision"] == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif job["precision"] == "int8":
        calib = np.load(job["calib"])

        def representative():
            for i in range(len(calib)):
                yield [tf.constant(calib[i:i + 1])]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if job["io"] == "int8":
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        if job.get("keep_float"):
            # Selective quantization (--max-drop): the converter's quantization debugger leaves the
            # ops that write these tensors in float, with Quantize/Dequantize around them.
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=job["keep_float"])
            debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=representative,
                                                                 debug_options=options)
    blob = debugger.get_nondebug_quantized_model() if job.get("keep_float") else conv.convert()
    tmp = job["out"] + ".partial"
    with open(tmp, "wb") as f:
        f.write(blob)
    # Run it once here: a TFLite kernel that rejects the graph aborts the whole process, and
    # this child is the one to lose, not the build.
    runner = TFLiteRunner(Path(tmp))
    runner.run(np.zeros((1, spec.shape[3], spec.shape[1], spec.shape[2]), np.float32))
    os.replace(tmp, job["out"])


if __name__ == "__main__":
    _convert(json.loads(Path(sys.argv[1]).read_text()))
else:
    from edge.targets.base import register_target

    register_target(TFLite())
