"""Quantization-aware training (--qat): it trains, the result reaches every int8 target and passes
parity there, the recipe is recorded, and bad input is one line with exit code 2. The tiny model
at 32x32 and a few dozen steps keep these fast."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edge.config import BuildConfig
from edge.data import BUILTIN_CALIB_DIR
from edge.errors import UserError
from edge.models import MODELS, load_model
from edge.pipeline import build
from edge.verification import verify
from edge import training
from edge.quantize import qat
from edge.quantize.calibration import calibration_and_parity
from edge.quantize.torch_ptq import FxPrepared, FxQnnpack
from edge.targets import TARGETS

from test_errors import fail
from test_matrix import MATRIX_INT8_BUDGET

SHAPE = (1, 3, 32, 32)


@pytest.fixture
def tiny(weights_file):
    spec = MODELS.get("tiny")
    model = load_model(spec, weights_file("tiny", 32), 32)
    cal, par = calibration_and_parity(None, spec, True, False)
    return spec, model, cal, par


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b).mean())


def test_fine_tune_freezes_late_and_the_ptl_keeps_the_learned_ranges(tiny):
    spec, model, cal, par = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = qat.fine_tune(model, torch.zeros(SHAPE), training.training_set(None, cal, spec),
                      epochs=20, max_steps=30, lr=1e-2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the fp32 model was modified"
    assert r.record["steps"] == 30 and r.record["freeze_step"] == 20 and r.record["bn_stats_freeze_step"] == 0
    held = r.record["holdout"]  # 7 of the 36 calibration crops pick the checkpoint
    assert held["samples"] == 7 and r.record["trained_on"] == 29
    assert held["selected_step"] > 0 and held["loss_by_step"][str(held["selected_step"])] < held["loss_by_step"]["0"]
    trained = dict(r.prepared.named_parameters())
    assert any(not torch.equal(trained[k], v) for k, v in before.items() if k in trained), "no weight moved"
    fqs = [m for m in r.prepared.modules() if hasattr(m, "observer_enabled")]
    assert fqs and all(int(m.observer_enabled[0]) == 0 for m in fqs)
    bns = [m for m in r.prepared.modules() if hasattr(m, "freeze_bn")]
    assert bns and all(m.freeze_bn for m in bns)
    x = torch.from_numpy(par.x)
    traced, info = FxQnnpack().convert(FxPrepared(r.prepared, "qat", qat=True), torch.zeros(SHAPE))
    with torch.no_grad():
        fake, flt, ref = r.prepared(x), r.float_model(x), model(x)
        lite = torch.cat([traced(x[i:i + 1]) for i in range(len(x))])
    assert info["method"] == "qat"
    assert _cos(lite, fake) > 0.999  # convert_fx kept the trained ranges and weights
    assert _cos(flt, fake) > 0.99  # the float network ONNX/TFLite start from is the trained one
    assert _cos(fake, ref) > 0.9  # and it still computes what the fp32 model computes


def test_training_starts_from_the_ptq_ranges(tiny):
    """Before any weight moves, the QAT student is PTQ: each activation range is the one quantize_torch's
    histogram observer finds on the same samples (a moving min/max start is not), and the two int8
    .ptl modules compute the same thing."""
    from edge.quantize import torch_ptq

    spec, model, cal, par = tiny
    ptq, _ = torch_ptq.prepare(model, torch.zeros(SHAPE), torch_ptq._qconfig("histogram", True))
    torch_ptq._calibrate(ptq, cal.x, 16)
    ptq_scales = [float(m.calculate_qparams()[0]) for n, m in ptq.named_modules() if "activation_post_process" in n]
    data = training.training_set(None, cal, spec)
    scales = {}
    for init in ("histogram", None):
        r = qat.fine_tune(model, torch.zeros(SHAPE), data, max_steps=1, lr=0.0, holdout=0, range_init=init)
        scales[init] = [float(m.scale) for m in qat._activation_fqs(r.prepared).values()]
    assert len(ptq_scales) == 7 and np.allclose(scales["histogram"], ptq_scales, rtol=1e-5)
    assert not np.allclose(scales[None], ptq_scales, rtol=1e-2)
    r = qat.fine_tune(model, torch.zeros(SHAPE), data, max_steps=1, lr=0.0, holdout=0)
    assert r.record["holdout"] is None and r.record["range_init"].startswith("histogram")
    qat_ptl, _ = FxQnnpack().convert(FxPrepared(r.prepared, "qat", qat=True), torch.zeros(SHAPE))
    ptq_ptl, _ = torch_ptq.to_lite(ptq, torch.zeros(SHAPE))
    x = torch.from_numpy(par.x)
    with torch.no_grad():
        a = torch.cat([qat_ptl(x[i:i + 1]) for i in range(len(x))])
        b = torch.cat([ptq_ptl(x[i:i + 1]) for i in range(len(x))])
    assert _cos(a, b) > 0.9995, _cos(a, b)  # a moving min/max start: 0.998


def test_qat_distillation_exports_to_every_target(tmp_path, weights_file):
    cfg = BuildConfig(model="tiny", targets=tuple(TARGETS.names()), precision="int8", out=str(tmp_path),
                      weights=weights_file("tiny", 32), budget=MATRIX_INT8_BUDGET, qat=True, epochs=20, max_steps=24,
                      lr=1e-2)
    manifests = build(cfg)
    assert [m["target"] for m in manifests] == TARGETS.names()
    for m in manifests:
        assert m["parity"]["passed"]
        rec = m["qat"]
        assert rec["steps"] == 24 and rec["freeze_step"] == 16 and rec["lr"] == 1e-2
        assert "distillation" in rec["objective"] and "cross-entropy" not in rec["objective"]
        assert rec["data"].startswith("calibration set")
        on_disk = json.loads((tmp_path / m["target"] / "manifest.json").read_text())
        assert on_disk["qat"] == rec and on_disk["build"]["config"]["qat"] is True
    ptl = next(m for m in manifests if m["target"] == "torchscript-mobile")
    assert ptl["target_details"]["quantization"]["method"] == "qat"
    pte = next(m for m in manifests if m["target"] == "executorch")["target_details"]["quantization"]
    assert pte["method"] == "qat" and "prepare_qat_pt2e" in pte["flow"] and pte["qat"]["steps"] == 24
    assert all(r["passed"] for r in verify(tmp_path))


def _labelled_folder(root):
    """An ImageFolder tree of the built-in photos in three classes."""
    for i, f in enumerate(sorted(BUILTIN_CALIB_DIR.glob("*.jpg"))):
        (root / str(i % 3)).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / str(i % 3) / f.name)
    return root


def test_qat_with_labelled_training_data(tmp_path, weights_file):
    train = _labelled_folder(tmp_path / "train")
    cfg = BuildConfig(model="tiny", targets=("torchscript-mobile",), precision="int8", out=str(tmp_path / "out"),
                      weights=weights_file("tiny", 32), budget=MATRIX_INT8_BUDGET, qat=True, train=str(train),
                      epochs=3, lr=1e-3)  # its three classes are arbitrary: a small step keeps parity with fp32
    [m] = build(cfg)
    rec = m["qat"]
    assert rec["samples"] == 9 and rec["steps"] == 3 and rec["epochs"] == 3
    assert rec["objective"].startswith("cross-entropy") and str(train) in rec["data"]


def test_labelled_loss_goes_down(tiny, tmp_path):
    spec, model, *_ = tiny
    data = training.training_set(str(_labelled_folder(tmp_path / "train")), None, spec)
    assert data.labels is not None and sorted(set(data.labels.tolist())) == [0, 1, 2]
    r = qat.fine_tune(model, torch.zeros(SHAPE), data, max_steps=40, lr=5e-2, batch_size=9)
    assert r.record["loss_end"] < 0.8 * r.record["loss_start"]  # 2.42 -> 1.71 when written


def test_config_round_trip_and_validation():
    cfg = BuildConfig(model="tiny", precision="int8", qat=True, train="t/", epochs=2, lr=0.01, max_steps=7)
    again = BuildConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg
    for kwargs, words in [({"qat": True}, "--int8"),
                          ({"precision": "int8", "epochs": 2}, "--qat"),
                          ({"precision": "int8", "qat": True, "epochs": 0}, "--epochs"),
                          ({"precision": "int8", "qat": True, "max_steps": 2.5}, "--max-steps"),
                          ({"precision": "int8", "qat": True, "lr": -1.0}, "--lr"),
                          ({"precision": "int8", "qat": True, "lr": float("nan")}, "--lr")]:
        with pytest.raises(UserError, match=words):
            BuildConfig(**kwargs)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_cli_qat_needs_int8(out, capsys):
    fail(["build", "--model", "tiny", "--weights", "random", "--target", "onnx", "--qat", "--out", str(out)],
         capsys, 2, "--qat", "--int8", out=out)


def test_cli_training_options_need_qat(out, capsys):
    fail(["build", "--model", "tiny", "--weights", "random", "--target", "onnx", "--int8", "--epochs", "3",
          "--out", str(out)], capsys, 2, "--epochs", "--qat", out=out)


def test_cli_empty_train_folder(out, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fail(["build", "--model", "tiny", "--weights", "random", "--target", "onnx", "--int8", "--qat",
          "--train", str(tmp_path / "empty"), "--out", str(out)], capsys, 2, "--train folder", "no labelled images",
         out=out)


def test_cli_train_labels_beyond_the_model(out, tmp_path, capsys):
    d = tmp_path / "train"
    (d / "images").mkdir(parents=True)
    shutil.copy(next(BUILTIN_CALIB_DIR.glob("*.jpg")), d / "images" / "a.jpg")
    (d / "labels.csv").write_text("file,class_index\na.jpg,50\n")
    fail(["build", "--model", "tiny", "--weights", "random", "--target", "onnx", "--int8", "--qat",
          "--train", str(d), "--out", str(out)], capsys, 2, "class index 50", "10 classes", out=out)


def _onnx_weights(path) -> list[np.ndarray]:
    """The int8 weights of a QDQ model, dequantized."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    out = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0, np.uint8)).dtype == np.int8:
            q, s = inits[n.input[0]].astype(np.float32), inits[n.input[1]]
            out.append(q * (s.reshape([-1] + [1] * (q.ndim - 1)) if s.ndim else s))
    return out


def _tflite_weights(path) -> list[np.ndarray]:
    """The int8 conv/linear weights of a .tflite, dequantized, in both torch layouts a kernel can map to."""
    from edge.targets.tflite import interpreter_class

    it = interpreter_class()[0](model_path=str(path))
    it.allocate_tensors()
    out = []
    for t in it.get_tensor_details():
        if t["dtype"] != np.int8 or len(t["shape"]) not in (2, 4):
            continue
        try:
            q = it.get_tensor(t["index"]).astype(np.float32)
        except ValueError:  # activations have no data
            continue
        qp = t["quantization_parameters"]
        shape = [1] * q.ndim
        shape[qp["quantized_dimension"]] = -1
        v = q * qp["scales"].reshape(shape)
        out += [v.transpose(0, 3, 1, 2), v.transpose(3, 0, 1, 2)] if q.ndim == 4 else [v]  # OHWI, 1HWC
    return out


def test_trained_int8_weights_reach_onnx_and_tflite_exactly(tiny, tmp_path):
    """The float network ONNX and TFLite start from carries the trained weights on their int8 grid, which
    is theirs too: their per-channel quantization must give back exactly the trained levels."""
    from edge.targets.base import ExportContext

    spec, model, cal, _ = tiny
    r = qat.fine_tune(model, torch.zeros(SHAPE), training.training_set(None, cal, spec),
                      max_steps=20, lr=1e-2)
    trained = {n: p.detach().numpy() for n, p in r.float_model.named_parameters() if n.endswith("weight")}
    assert len(trained) == 5
    ctx = ExportContext(r.float_model, spec, tmp_path, example=cal.head(1).arrays, calib=cal, qat=r)
    onnx, tflite = TARGETS.get("onnx"), TARGETS.get("tflite")
    onnx_info = onnx.export(ctx, "int8", tmp_path / "m.onnx", onnx.quantize(ctx)).details["quantization"]
    assert onnx_info["known_ranges"]["matched"] >= 5  # the learned activation ranges were carried over
    tflite.export(ctx, "int8", tmp_path / "m.tflite", tflite.quantize(ctx))
    for got in (_onnx_weights(tmp_path / "m.onnx"), _tflite_weights(tmp_path / "m.tflite")):
        for name, w in trained.items():
            diffs = [np.abs(g - w).max() for g in got if g.shape == w.shape]
            assert diffs and min(diffs) == 0.0, f"{name}: trained int8 levels not kept ({min(diffs, default=None)})"


@pytest.mark.slow  # a minute: two trainings and a lowering (the default run's QAT test covers the flow)
def test_pt2e_qat_trains_and_the_pte_keeps_the_learned_ranges(tiny, tmp_path):
    """executorch --qat: PT2E's own QAT flow trains (observers frozen late, the held-out pick), and
    the .pte computes what the trained fake-quant graph computes: the learned ranges and weights
    reached it, nothing was recalibrated."""
    from edge.targets.base import ExportContext
    from edge.targets.executorch import PteRunner

    spec, model, cal, par = tiny
    r = qat.fine_tune(model, torch.zeros(SHAPE), training.training_set(None, cal, spec), epochs=20, max_steps=30,
                      lr=1e-2)
    ctx = ExportContext(model=r.float_model, spec=spec, workdir=tmp_path, calib=cal, qat=r,
                        example={spec.inputs[0].name: np.zeros(SHAPE, np.float32)})
    target = TARGETS.get("executorch")
    p = target.quantize(ctx)
    assert p.qat and p.record["steps"] == 30 and p.record["freeze_step"] == 20 and p.record["trained_on"] == 29
    assert all(not bool(m.observer_enabled[0]) for m in qat._pt2e_fqs(p.module))
    exported = target.export(ctx, "int8", tmp_path / "m.pte", p)
    assert exported.details["quantization"]["method"] == "qat"
    x = torch.from_numpy(par.x)
    with torch.no_grad():
        fake, ref = torch.cat([p.module(x[i:i + 1]) for i in range(len(x))]), model(x)
    pte = torch.from_numpy(PteRunner(exported.path, exported.inputs, exported.outputs).run(par.x)["output"])
    assert _cos(pte, fake) > 0.999  # convert_pt2e + lowering kept the trained ranges and weights
    assert _cos(fake, ref) > 0.9
