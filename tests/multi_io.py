"""Test-only artifacts with several named, typed inputs and outputs, made without edge's build
pipeline, each with a hand-written schema-2 manifest:

- ONNX and .ptl: a tiny torch module taking `image` (float, 1x3x12x16 NCHW), `ids` (int64 tokens,
  1x8, into an nn.Embedding) and `mask` (int64 0/1, 1x8), returning `logits` (1x10) and `feat`
  (1x4x12x16 NCHW). The ONNX manifest lists its inputs and outputs in another order than the
  graph, so only binding by name gets them right.
- TFLite: the same shape of network written in TensorFlow, NHWC (`image` 1x12x16x3, `feat`
  1x12x16x4), `ids` int64; fp32, fp16 weights, or int8 with int8 image/outputs. The interpreter
  orders the outputs feat, logits; the manifest lists logits, feat. Built in a child process
  (`python tests/multi_io.py tflite DIR PRECISION`), which keeps TensorFlow out of the tests.

`reference_*` run the same artifact in its own runtime directly, for the runner to match."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

VOCAB, TOKENS, IMAGE = 50, 8, (1, 3, 12, 16)
MEAN, STD = [123.7, 116.3, 103.5], [58.4, 57.1, 57.4]


def sample(seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in the model's layout: a float image, token ids, and a mask with the last 3 tokens off."""
    rng = np.random.default_rng(seed)
    mask = np.ones((1, TOKENS), np.int64)
    mask[:, -3:] = 0
    return {"image": rng.standard_normal(IMAGE).astype(np.float32),
            "ids": rng.integers(0, VOCAB, (1, TOKENS)).astype(np.int64), "mask": mask}


def _io(name, shape, dtype, tensor, layout=None, model_shape=None, model_layout=None, scale=None,
        zero_point=None, **extra) -> dict:
    return {"name": name, "shape": list(shape), "dtype": dtype, "layout": layout,
            "model_shape": list(model_shape or shape), "model_layout": model_layout, "scale": scale,
            "zero_point": zero_point, "tensor": tensor, **extra}


def _write_manifest(folder: Path, artifact: str, target: str, precision: str, inputs: list, outputs: list) -> None:
    (folder / "manifest.json").write_text(json.dumps({
        "schema_version": 2, "artifact": artifact, "target": target, "precision": precision, "model": "two-in-two-out",
        "inputs": inputs, "outputs": outputs, "labels": None}, indent=2))


# ---------------------------------------------------------------- torch: ONNX and .ptl

def torch_module():
    import torch
    import torch.nn as nn

    class TwoInTwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.emb = nn.Embedding(VOCAB, 4)
            self.fc = nn.Linear(8, 10)

        def forward(self, image, ids, mask):
            feat = torch.relu(self.conv(image))
            m = mask.to(torch.float32).unsqueeze(-1)
            tokens = (self.emb(ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.fc(torch.cat([feat.mean(dim=(2, 3)), tokens], 1)), feat

    torch.manual_seed(0)
    return TwoInTwoOut().eval()


def torch_outputs(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        logits, feat = torch_module()(*(torch.from_numpy(x[k]) for k in ("image", "ids", "mask")))
    return {"logits": logits.numpy(), "feat": feat.numpy()}


def _torch_io() -> tuple[list, list]:
    image = _io("image", IMAGE, "float32", "image", layout="NCHW", model_layout="NCHW",
                source={"kind": "image", "resize": 16, "crop": 16, "mean": MEAN, "std": STD, "color": "RGB"})
    ids = _io("ids", (1, TOKENS), "int64", "ids", source={"kind": "tokens", "vocab_size": VOCAB})
    mask = _io("mask", (1, TOKENS), "int64", "mask", source={"kind": "mask"})
    logits = _io("logits", (1, 10), "float32", "logits", task="classification")
    feat = _io("feat", (1, 4, 12, 16), "float32", "feat", layout="NCHW", model_layout="NCHW", task="dense")
    return [image, ids, mask], [logits, feat]


def onnx_artifact(folder: Path) -> Path:
    """model.onnx and its manifest; the manifest lists inputs mask, ids, image and outputs feat, logits."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    x = sample()
    torch.onnx.export(torch_module(), tuple(torch.from_numpy(x[k]) for k in ("image", "ids", "mask")),
                      str(folder / "model.onnx"), dynamo=False, input_names=["image", "ids", "mask"],
                      output_names=["logits", "feat"], opset_version=17)
    (image, ids, mask), (logits, feat) = _torch_io()
    _write_manifest(folder, "model.onnx", "onnx", "fp32", [mask, ids, image], [feat, logits])
    return folder / "model.onnx"


def ptl_artifact(folder: Path) -> Path:
    """model.ptl (positional: image, ids, mask -> (logits, feat)) and its manifest, in that order."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    x = sample()
    with torch.no_grad():
        traced = torch.jit.trace(torch_module(), tuple(torch.from_numpy(x[k]) for k in ("image", "ids", "mask")))
    traced._save_for_lite_interpreter(str(folder / "model.ptl"))
    ins, outs = _torch_io()
    for t in ins + outs:
        t["tensor"] = None  # positional
    _write_manifest(folder, "model.ptl", "torchscript-mobile", "fp32", ins, outs)
    return folder / "model.ptl"


def reference_onnx(artifact: Path, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(artifact), opts, providers=["CPUExecutionProvider"])
    return dict(zip(["logits", "feat"], s.run(["logits", "feat"], x)))


def reference_ptl(artifact: Path, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch
    from torch.jit.mobile import _load_for_lite_interpreter

    with torch.no_grad():
        logits, feat = _load_for_lite_interpreter(str(artifact))(*(torch.from_numpy(x[k])
                                                                   for k in ("image", "ids", "mask")))
    return {"logits": logits.numpy(), "feat": feat.numpy()}


# ---------------------------------------------------------------- TensorFlow: TFLite

def tflite_artifact(folder: Path, precision: str = "fp32") -> Path:
    """model.tflite (fp32, fp16 or int8) and its manifest, built in a child process."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "tflite", str(folder), precision], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    if proc.returncode != 0:
        raise RuntimeError(f"building the test TFLite model failed:\n{proc.stderr[-3000:]}")
    return folder / "model.tflite"


def _tf_function():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((3, 3, 3, 4)).astype(np.float32) * 0.3)
    b = tf.constant(rng.standard_normal(4).astype(np.float32) * 0.1)
    emb = tf.constant(rng.standard_normal((VOCAB, 4)).astype(np.float32))
    fc = tf.constant(rng.standard_normal((8, 10)).astype(np.float32) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec([1, 12, 16, 3], tf.float32, name="image"),
                                  tf.TensorSpec([1, TOKENS], tf.int64, name="ids")])
    def f(image, ids):
        feat = tf.nn.relu(tf.nn.conv2d(image, w, 1, "SAME") + b)
        tokens = tf.reduce_mean(tf.gather(emb, ids), 1)
        return {"logits": tf.matmul(tf.concat([tf.reduce_mean(feat, [1, 2]), tokens], 1), fc), "feat": feat}
    return f


def _build_tflite(folder: Path, precision: str) -> None:
    import tensorflow as tf

    f = _tf_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        def representative():
            for seed in range(32):
                x = sample(seed)
                yield [x["image"].transpose(0, 2, 3, 1), x["ids"]]
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8  # float tensors only; ids stay int64
    (folder / "model.tflite").write_bytes(conv.convert())
    interp = tf.lite.Interpreter(model_path=str(folder / "model.tflite"))
    ins = {d["name"].split(":")[0].removeprefix("serving_default_"): d for d in interp.get_input_details()}
    outs = {("feat" if len(d["shape"]) == 4 else "logits"): d for d in interp.get_output_details()}
    _write_manifest(folder, "model.tflite", "tflite", precision, [
        _io("image", (1, 12, 16, 3), **_tfl(ins["image"]), layout="NHWC", model_shape=IMAGE, model_layout="NCHW",
            source={"kind": "range", "low": -2.0, "high": 2.0}),
        _io("ids", (1, TOKENS), **_tfl(ins["ids"]), source={"kind": "tokens", "vocab_size": VOCAB})], [
        _io("logits", (1, 10), **_tfl(outs["logits"]), task="classification"),
        _io("feat", (1, 12, 16, 4), **_tfl(outs["feat"]), layout="NHWC", model_shape=(1, 4, 12, 16),
            model_layout="NCHW", task="dense")])
    x = sample()  # the TensorFlow function's own outputs on sample(), in the model's layout
    y = f(tf.constant(x["image"].transpose(0, 2, 3, 1)), tf.constant(x["ids"]))
    np.savez(folder / "tf_outputs.npz", logits=y["logits"].numpy(), feat=y["feat"].numpy().transpose(0, 3, 1, 2))


def _tfl(d: dict) -> dict:
    """An interpreter's tensor detail as manifest fields: dtype, tensor name, quantization."""
    dtype = np.dtype(d["dtype"]).name
    scale, zp = d["quantization"]
    quantized = dtype in ("int8", "uint8") and scale
    return {"dtype": dtype, "tensor": d["name"], "scale": float(scale) if quantized else None,
            "zero_point": int(zp) if quantized else None}


def reference_tflite(artifact: Path, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The interpreter run directly: NCHW -> NHWC, quantized with its own parameters, and back."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(artifact), num_threads=1)
    interp.allocate_tensors()
    feeds = {"image": x["image"].transpose(0, 2, 3, 1), "ids": x["ids"]}
    for d in interp.get_input_details():
        v = feeds[d["name"].split(":")[0].removeprefix("serving_default_")]
        scale, zp = d["quantization"]
        if d["dtype"] == np.int8:
            v = np.clip(np.round(v / scale + zp), -128, 127)
        interp.set_tensor(d["index"], v.astype(d["dtype"]))
    interp.invoke()
    out = {}
    for d in interp.get_output_details():
        y = interp.get_tensor(d["index"])
        scale, zp = d["quantization"]
        if d["dtype"] == np.int8:
            y = (y.astype(np.float32) - zp) * scale
        out["feat" if y.ndim == 4 else "logits"] = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
    return out


def output_steps(folder: Path) -> dict[str, float]:
    """Each output's quantization step (0 for float outputs), from the manifest."""
    m = json.loads((folder / "manifest.json").read_text())
    return {o["name"]: o.get("scale") or 0.0 for o in m["outputs"]}


KINDS = {"onnx": (onnx_artifact, ()), "ptl": (ptl_artifact, ()), "tflite-fp32": (tflite_artifact, ("fp32",)),
         "tflite-fp16": (tflite_artifact, ("fp16",)), "tflite-int8": (tflite_artifact, ("int8",))}
REFERENCES = {"onnx": reference_onnx, "ptl": reference_ptl, "tflite-fp32": reference_tflite,
              "tflite-fp16": reference_tflite, "tflite-int8": reference_tflite}


class Builds:
    """builds[kind] -> the artifact of that kind (see KINDS), built on first use into root/kind."""

    def __init__(self, root: Path):
        self.root, self._done = Path(root), {}

    def __getitem__(self, kind: str) -> Path:
        if kind not in self._done:
            make, args = KINDS[kind]
            self._done[kind] = make(self.root / kind, *args)
        return self._done[kind]


def inputs_for(artifact: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """sample(seed), restricted to the inputs the artifact's manifest names."""
    names = [i["name"] for i in json.loads((artifact.parent / "manifest.json").read_text())["inputs"]]
    x = sample(seed)
    return {n: x[n] for n in names}


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "tflite":
        sys.exit(f"usage: {sys.argv[0]} tflite DIR fp32|fp16|int8")
    _build_tflite(Path(sys.argv[2]), sys.argv[3])
