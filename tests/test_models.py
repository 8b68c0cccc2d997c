"""Models that are not one square RGB image in and one logits vector out.

- A real-accuracy model trained here, offline: a small CNN on scikit-learn's bundled 8x8 digits,
  whose fp32 and int8 accuracy on held-back digits is measured on every target (int8 within 1 pp).
- A user's own two-input, two-output network with a non-square input, given only as
  `file.py:factory` plus `example_inputs()` (tests/assets/fusion.py): fp32 on every target, int8
  where a target can, parity passed per output.
- Bad input for such models: wrong .npz keys, a dtype mismatch, an example_inputs() that raises,
  an output the task metric cannot judge; one line and exit 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edge
from edge.models import MODELS
from edge.targets import TARGETS

from test_errors import fail

FUSION = f"{Path(__file__).parent / 'assets' / 'fusion.py'}:make"
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_digits_real_accuracy_on_every_target(digits, precision, tmp_path):
    """Real accuracy, in each runtime: fp32 as PyTorch's; int8 within 1 pp of fp32 (the default int8
    budget, max_top1_drop 1.0, is what the build itself checks; asserted here again)."""
    targets = [t.name for t in TARGETS if precision in t.precisions]
    ms = edge.build("digits_cnn", "all", precision=precision, weights=digits["weights"], calib=digits["calib"],
                    eval=digits["eval"], out=str(tmp_path))
    assert sorted(m["target"] for m in ms) == sorted(targets)
    for m in ms:
        p = m["parity"]
        assert p["passed"] and p["samples"] == digits["n_eval"] and m["labels"] == "labels.txt"
        assert p["reference_top1"] > 90.0, p  # a trained model, not chance (10%)
        assert p["top1_drop_pp"] <= 1.0, (m["target"], p["top1"], p["reference_top1"])
        if precision == "fp32":
            assert p["top1"] == p["reference_top1"]
        assert m["inputs"][0]["source"] == {"kind": "range", "low": 0.0, "high": 1.0}


def test_fusion_two_inputs_two_outputs_every_target(tmp_path):
    """The bar: a two-input, two-output network with a 48x64 input, as file.py:factory plus
    example_inputs(), builds fp32 on every target and int8 on ONNX and TFLite with parity passed."""
    fp32 = edge.build(FUSION, "all", weights="random", out=str(tmp_path / "fp32"))
    int8 = [edge.build(FUSION, t, precision="int8", weights="random", out=str(tmp_path / "int8"))
            for t in ("onnx", "tflite")]
    assert {m["target"] for m in fp32} == set(TARGETS.names())
    for m in fp32 + int8:
        assert m["parity"]["passed"], m["parity"]
        assert [i["name"] for i in m["inputs"]] == ["frame", "reading"]
        assert [o["name"] for o in m["outputs"]] == ["output0", "output1"]
        assert [o["task"] for o in m["outputs"]] == ["classification", "dense"]
        assert m["inputs"][0]["model_shape"] == [1, 3, 48, 64] and m["outputs"][1]["model_shape"] == [1, 2, 12, 16]
        assert "input" not in m and "output" not in m  # the single-I/O fields only where they fit
        assert set(m["parity"]["outputs"]) == {"output0", "output1"}
        assert m["parity"]["judged_on"].startswith("random weights")
        assert m["model_file"]["sha256"] and m["weights"] == "random"
    tfl = next(m for m in fp32 if m["target"] == "tflite")
    assert tfl["inputs"][0]["layout"] == "NHWC" and tfl["outputs"][1]["layout"] == "NHWC"
    assert tfl["inputs"][1]["layout"] is None
    reports = edge.verify(str(tmp_path / "fp32"))  # from the check samples the folders hold
    assert len(reports) == len(TARGETS.names()) and all(r["passed"] for r in reports)


def test_fusion_int8_dense_output_is_judged_by_sqnr(tmp_path):
    m = edge.build(FUSION, "onnx", precision="int8", weights="random", out=str(tmp_path))
    heat = m["parity"]["outputs"]["output1"]
    assert heat["task"] == "dense" and set(heat["budget"]) == {"min_cosine", "min_sqnr_db"}
    assert heat["sqnr_db"] > 10.0 and "top1_agreement" not in heat


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_npz_with_a_missing_input(out, tmp_path, capsys):
    np.savez(tmp_path / "c.npz", frame=np.zeros((4, 3, 48, 64), np.float32))
    fail(["build", "--model", FUSION, "--weights", "random", "--target", "onnx", "--int8",
          "--calib", str(tmp_path / "c.npz"), "--out", str(out)], capsys, 2, "no array for input reading", out=out)


def test_npz_with_a_wrong_dtype(out, tmp_path, capsys):
    np.savez(tmp_path / "c.npz", frame=np.zeros((4, 3, 48, 64), np.float32), reading=np.zeros((4, 6), np.int32))
    fail(["build", "--model", FUSION, "--weights", "random", "--target", "onnx", "--int8",
          "--calib", str(tmp_path / "c.npz"), "--out", str(out)], capsys, 2, "reading", "int32", out=out)


def test_npz_with_a_wrong_shape_or_an_extra_array(out, tmp_path, capsys):
    np.savez(tmp_path / "c.npz", frame=np.zeros((4, 3, 48, 48), np.float32), reading=np.zeros((4, 6), np.float32))
    fail(["build", "--model", FUSION, "--weights", "random", "--target", "onnx", "--int8",
          "--calib", str(tmp_path / "c.npz"), "--out", str(out)], capsys, 2, "frame", "shape", out=out)
    np.savez(tmp_path / "d.npz", frame=np.zeros((4, 3, 48, 64), np.float32), reading=np.zeros((4, 6), np.float32),
             extra=np.zeros(4))
    fail(["build", "--model", FUSION, "--weights", "random", "--target", "onnx", "--int8",
          "--calib", str(tmp_path / "d.npz"), "--out", str(out)], capsys, 2, "extra", out=out)


def test_image_folder_for_a_two_input_model(out, capsys):
    from edge.data import BUILTIN_CALIB_DIR

    fail(["build", "--model", FUSION, "--weights", "random", "--target", "onnx", "--int8",
          "--calib", str(BUILTIN_CALIB_DIR), "--out", str(out)], capsys, 2, "2 inputs", ".npz", out=out)


def test_example_inputs_that_raise(out, tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 2)\n"
                 "def example_inputs():\n    raise RuntimeError('no camera attached')\n")
    fail(["build", "--model", f"{f}:make", "--weights", "random", "--target", "onnx", "--out", str(out)],
         capsys, 2, "example_inputs()", "no camera attached", out=out)


def test_example_inputs_of_the_wrong_kind(out, tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 2)\n"
                 "def example_inputs():\n    return [[1, 2, 3, 4]]\n")
    fail(["build", "--model", f"{f}:make", "--weights", "random", "--target", "onnx", "--out", str(out)],
         capsys, 2, "example_inputs()", "tensor", out=out)


def test_an_output_the_task_cannot_judge(out, capsys):
    fail(["build", "--model", FUSION, "--weights", "random", "--target", "onnx", "--task", "output1=classification",
          "--out", str(out)], capsys, 2, "output1", "classification", "dense", out=out)
    fail(["build", "--model", FUSION, "--weights", "random", "--target", "onnx", "--task", "heat=dense",
          "--out", str(out)], capsys, 2, "no output 'heat'", out=out)


def test_input_shape_of_any_rank_and_names_from_forward(tmp_path):
    """Without example_inputs(): --input-shape, any rank and H != W; names from forward's signature."""
    f = tmp_path / "seq.py"
    f.write_text("import torch\nclass M(torch.nn.Module):\n"
                 "    def __init__(self):\n        super().__init__()\n        self.c = torch.nn.Conv1d(5, 8, 3)\n"
                 "        self.f = torch.nn.Linear(8, 3)\n"
                 "    def forward(self, signal):\n        return self.f(self.c(signal).mean(2))\n"
                 "def make():\n    return M()\n")
    m = edge.build(f"{f}:make", "onnx", weights="random", input_shape=(1, 5, 40), out=str(tmp_path / "o"))
    assert m["inputs"][0]["name"] == "signal" and m["inputs"][0]["model_shape"] == [1, 5, 40]
    assert m["outputs"][0]["task"] == "classification" and m["parity"]["passed"]
    m = edge.build(f"{f}:make", "tflite", weights="random", input_shape=(1, 5, 40), out=str(tmp_path / "o"))
    assert m["inputs"][0]["layout"] == "NLC" and m["inputs"][0]["model_layout"] == "NCL"


def test_registered_image_model_at_a_non_square_size(tmp_path):
    m = edge.build("tiny", "tflite", weights="random", input_shape=(1, 3, 24, 40), out=str(tmp_path))
    assert m["inputs"][0]["model_shape"] == [1, 3, 24, 40] and m["inputs"][0]["shape"] == [1, 24, 40, 3]
    assert m["preprocess"]["crop"] == [24, 40] and m["parity"]["passed"]


def test_manifest_lists_inputs_and_outputs_and_keeps_the_single_fields(tmp_path):
    m = edge.build("tiny", "onnx", weights="random", out=str(tmp_path))
    on_disk = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert on_disk == m and m["schema"] == "edge-manifest" and m["schema_version"] == 2
    assert m["input"]["layout"] == "NCHW" and m["input"]["mean"] == list(MODELS.get("tiny").preprocess.mean)
    assert m["output"]["shape"] == [1, 10] and m["inputs"][0]["source"]["kind"] == "image"
    assert [s["stage"] for s in m["stages"]] == ["load", "export", "check"]
