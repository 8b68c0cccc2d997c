"""End to end: every registered model x target x precision, generated from the registries, at
small input sizes. Each build runs the artifact in its own runtime and checks parity against
PyTorch; a build that misses its budget raises, so these tests fail on a real regression."""
from __future__ import annotations

import json

import pytest

from edge.config import BuildConfig
from edge.models import MODELS
from edge.pipeline import build
from edge.verification import verify
from edge.targets import PRECISIONS, TARGETS

from conftest import offline_weights, small_shape

# Combinations that cannot be built, with the reason (from each target's own declaration).
UNSUPPORTED = {(t.name, p): t.unsupported.get(p, "not implemented")
               for t in TARGETS for p in PRECISIONS if p not in t.precisions}

# The default run (under 30 minutes on 2 cores) builds every model in int8 on every target, and
# every precision of the small models everywhere; the rest runs under `slow` (`make test-slow`).
# TFLite dominates (onnx2tf: 50-150 s a cell for the larger image models, measured with
# `pytest --durations=0`), so its fp32/fp16 cells of those models are slow, and so are the cells
# of the three largest networks, whose operators their smaller siblings already cover
# (resnet18_cifar/resnet18 share one architecture; mobilenet_v3_large is mobilenet_v3_small's).
SLOW_MODELS = {"resnet18", "mobilenet_v3_large"}
# resnet18_cifar is resnet18's architecture at 32 px with another stem: its cells are exhaustive
# (CI took 80 of its 90 minutes with them under slow; they cost about 7).
EXHAUSTIVE_MODELS = {"resnet18_cifar"}
SMALL_MODELS = {"tiny", "digits_cnn", "tc_resnet8_kws", "text_transformer"}


# ExecuTorch's lowering (to_edge_transform_and_lower) costs 30-40 s per network of MobileNetV2's
# size whatever the input size (measured with cProfile: its graph passes), so a full column is
# 18 minutes. The default run builds the small models (conv, depthwise, linear, attention, audio
# and text inputs); `slow` adds EfficientNet-Lite0 (ReLU6, TF padding; also scored on real photos
# by tests/test_accuracy.py) and, in int8, a detector (hard-swish, the SSD heads), channel shuffle
# and fire modules. `exhaustive` (make test-all; CI's 90 minutes cannot hold it) has the rest of
# the column, and TFLite fp16 of the larger networks: fp16 differs from fp32 only in the
# converter's weight type, which the small models' fp16 cells and EfficientNet-Lite0's cover.
EXECUTORCH_SLOW = {("efficientnet_lite0", "fp32"), ("efficientnet_lite0", "int8"), ("ssdlite_mobilenet_v3", "int8"),
                   ("shufflenet_v2_x1_0", "int8"), ("squeezenet1_1", "int8")}


def _marks(m: str, t: str, p: str) -> list:
    if (t, p) in UNSUPPORTED:
        return [pytest.mark.skip(reason=UNSUPPORTED[(t, p)])]
    if m in EXHAUSTIVE_MODELS:
        return [pytest.mark.exhaustive]
    if t == "executorch" and (m, p) == ("text_transformer", "int8"):  # 44 s: attention's int8 lowering
        return [pytest.mark.slow]
    if t == "executorch" and m not in SMALL_MODELS:
        return [pytest.mark.slow if (m, p) in EXECUTORCH_SLOW else pytest.mark.exhaustive]
    if t == "tflite" and p == "fp16" and m not in SMALL_MODELS | {"efficientnet_lite0"}:
        return [pytest.mark.exhaustive]
    if m in SLOW_MODELS or (t == "tflite" and p != "int8" and m not in SMALL_MODELS):
        return [pytest.mark.slow]
    return []


CASES = [pytest.param(m, t, p, id=f"{m}-{t}-{p}", marks=_marks(m, t, p))
         for m in MODELS.names() for t in TARGETS.names() for p in PRECISIONS]

# The int8 cells of the matrix are judged on output cosine only. At the matrix's small inputs
# (64 px, where even EfficientNet-Lite0's real weights are far from their training
# distribution) and with random weights, logits sit close together and a small quantization
# error flips argmax and top-5 often; measured here: random-weight int8 cosines 0.78-0.90 on
# every target, while a broken artifact (wrong layout, bad scales) gives far less. The accuracy
# bar itself is tests/test_accuracy.py: EfficientNet-Lite0 at 224 px on 750 real photos.
MATRIX_INT8_BUDGET = {"min_top1_agreement": 0.0, "min_top5_overlap": 0.0, "min_cosine": 0.7}

# TFLite artifacts that XNNPACK takes whole (one partition, no op outside), checked here. The
# MobileNetV3 family is not: onnx2tf writes its hard-sigmoid as RELU_0_TO_1, which XNNPACK has not,
# and int8 HARD_SWISH stays outside too; the manifest names them (tests/test_delegation.py).
WHOLE_IN_XNNPACK = {"tiny", "digits_cnn", "tc_resnet8_kws", "resnet18_cifar", "resnet18", "mobilenetv2",
                    "efficientnet_lite0"}


@pytest.mark.parametrize("model,target,precision", CASES)
def test_build_matrix(model, target, precision, tmp_path, weights_file):
    spec = MODELS.get(model)
    shape = small_shape(spec)
    real = offline_weights(model)
    cfg = BuildConfig(model=model, targets=(target,), precision=precision, out=str(tmp_path / "out"),
                      weights="imagenet" if real else weights_file(model, shape), input_shape=shape,
                      budget=MATRIX_INT8_BUDGET if precision == "int8" else {})
    [m] = build(cfg)
    out = tmp_path / "out" / target  # every build writes OUT/<target>/
    assert (out / m["artifact"]).stat().st_size == m["size_bytes"]
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["parity"]["passed"] and m["precision"] == precision and m["target"] == target
    assert (m["calibration"] is not None) == (precision == "int8")
    [export] = [s for s in m["stages"] if s["stage"] == "export"]
    if target in ("tflite", "onnx"):  # how the runtime placed the graph, and what split it (if anything)
        d = export["delegation"]
        assert set(d["split"]) == set(d.get("outside") or d.get("float_between_qdq") or {})
        if target == "tflite" and model in WHOLE_IN_XNNPACK:
            assert (d["partitions"], d["outside"]) == (1, {}), d
    files = {m["artifact"], "manifest.json", m["check"]["file"]} | ({m["labels"]} if m["labels"] else set())
    assert sorted(p.name for p in out.iterdir()) == sorted(files)


def test_unsupported_combinations_are_declared():
    """Every target declares why it lacks a precision, so users and this matrix get a reason."""
    assert UNSUPPORTED, "the matrix should list at least one unsupported combination"
    for (t, p), why in UNSUPPORTED.items():
        assert why != "not implemented", f"{t} {p} needs a stated reason"


def test_target_all_calibrates_once_and_verify_passes(tmp_path, weights_file):
    """--target all: one calibration set feeds every target; `edge verify` re-checks the folder."""
    cfg = BuildConfig(model="tiny", targets=tuple(TARGETS.names()), precision="int8", out=str(tmp_path),
                      weights=weights_file("tiny", 32), budget=MATRIX_INT8_BUDGET)
    manifests = build(cfg)
    assert [m["target"] for m in manifests] == TARGETS.names()
    hashes = {m["calibration"]["sha256_of_sample_list"] for m in manifests}
    counts = {m["calibration"]["count"] for m in manifests}
    assert len(hashes) == 1 and len(counts) == 1
    reports = verify(tmp_path)
    assert len(reports) == len(manifests) and all(r["passed"] for r in reports)


def test_tflite_int8_io_with_a_relative_out(tmp_path, weights_file, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the converter runs in its own folder; a relative --out must still work
    cfg = BuildConfig(model="tiny", targets=("tflite",), precision="int8", io="int8", out="rel/out",
                      weights=weights_file("tiny", 32), budget=MATRIX_INT8_BUDGET)
    [m] = build(cfg)
    assert (tmp_path / "rel" / "out" / "tflite" / m["artifact"]).is_file()
    assert m["input"]["dtype"] == "int8" and m["output"]["dtype"] == "int8"
    assert m["input"]["layout"] == "NHWC" and isinstance(m["input"]["scale"], float)
    assert isinstance(m["output"]["zero_point"], int)
