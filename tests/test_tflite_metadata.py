"""TFLite Model Metadata (targets/tflite_metadata.py) on real tiny TFLite models: what is written
reads back, sits where the Task Library and MediaPipe look for it, leaves the graph and its outputs
bit-identical, and the file is replaced atomically with a umask-following mode."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import edge
from edge.errors import ConversionError, UserError
from edge.targets import tflite_metadata as tm

TOOL = tm._load_tool()
needs_tool = pytest.mark.skipif(isinstance(TOOL, str), reason=f"TFLite metadata cannot be written here: {TOOL}")

LABELS = [f"class {i}" for i in range(9)] + ["café"]  # one non-ASCII label: the file is UTF-8
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
ARGS = dict(input_name="image", output_name="logits", description="tiny test classifier")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny model per kind, built once: fp32, and int8 with int8 input/output."""
    root = tmp_path_factory.mktemp("tflite-metadata")
    out = {}
    for kind, kw in {"fp32": dict(precision="fp32"), "int8": dict(precision="int8", io="int8")}.items():
        edge.build(model="tiny", target="tflite", weights="random", out=str(root / kind), **kw)
        out[kind] = next((root / kind / "tflite").glob("*.tflite"))
    return out


@pytest.fixture
def model(built, tmp_path, request):
    """A fresh copy of the built model of kind `request.param`, alone in its folder."""
    dst = tmp_path / "m" / built[request.param].name
    dst.parent.mkdir()
    shutil.copyfile(built[request.param], dst)
    return dst


def run(path: Path) -> tuple[np.ndarray, list, list]:
    """Raw output of the model on a fixed input, and its input/output details, in ai-edge-litert."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    rng = np.random.default_rng(0)
    x = (rng.integers(-128, 128, i["shape"]) if i["dtype"] == np.int8 else rng.normal(0, 1, i["shape"]))
    it.set_tensor(i["index"], x.astype(i["dtype"]))
    it.invoke()
    keys = ("name", "shape", "dtype", "quantization")
    return it.get_tensor(o["index"]).copy(), [str(i[k]) for k in keys], [str(o[k]) for k in keys]


def folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir()}


@needs_tool
@pytest.mark.parametrize("model", ["fp32", "int8"], indirect=True)
def test_metadata_round_trips_and_leaves_the_graph_alone(model):
    before = run(model)
    assert tm.read_metadata(model)["labels"] == [str(i) for i in range(10)]  # edge's build embedded its own

    result = tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)

    assert result["written"] is True and result["tool"] == "tflite-support 0.4.4"
    assert {"input.normalization", "input.image_properties", "output.labels"} <= set(result["fields"])
    assert result["labels_file"] == "labels.txt" and result["num_labels"] == 10
    md = tm.read_metadata(model)
    assert md["labels"] == LABELS and md["associated_files"] == ["labels.txt"]
    # Stored as float32, as the schema says; exactly those values come back.
    assert md["mean"] == [float(np.float32(v)) for v in MEAN] and md["std"] == [float(np.float32(v)) for v in STD]
    assert result["mean"] == md["mean"] and result["std"] == md["std"]
    assert md["input"]["color_space"] == "RGB" and md["input"]["name"] == "image"
    assert md["output"] == {"name": "logits", "description": "Class scores (logits), one per label.",
                            "labels_file": "labels.txt"}
    assert md["description"] == "tiny test classifier" and md["min_parser_version"] == "1.0.0"
    if "fp32" in model.name:  # float input: stats are the normalised range of pixels 0..255
        np.testing.assert_allclose(md["input"]["min"], (0 - np.array(MEAN)) / STD, rtol=1e-6)
        np.testing.assert_allclose(md["input"]["max"], (255 - np.array(MEAN)) / STD, rtol=1e-6)
    else:
        assert md["input"]["min"] is None and "quantized" in md["input"]["description"]
    # The readers' limits, for the manifest: int8 input, and MediaPipe's single-value normalisation.
    notes = " | ".join(result["notes"])
    assert ("uint8 or float32" in notes) == ("int8" in model.name)
    assert "MediaPipe Tasks refuses per-channel" in notes  # ImageNet's mean/std differ per channel

    after = run(model)
    assert after[1:] == before[1:]  # same input/output names, shapes, dtypes, quantization
    assert after[0].dtype == before[0].dtype and after[0].tobytes() == before[0].tobytes()


@needs_tool
@pytest.mark.parametrize("model", ["fp32"], indirect=True)
def test_metadata_sits_where_task_library_and_mediapipe_look(model):
    """Read without tflite-support: a `TFLITE_METADATA` entry in the model (current schema) whose
    buffer is a ModelMetadata flatbuffer ("M001"), and labels.txt in the zip appended to the model."""
    from ai_edge_litert import schema_py_generated as fb

    tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)
    blob = model.read_bytes()
    m = fb.Model.GetRootAs(blob, 0)
    entries = {m.Metadata(i).Name(): m.Metadata(i).Buffer() for i in range(m.MetadataLength())}
    assert b"TFLITE_METADATA" in entries
    meta = m.Buffers(entries[b"TFLITE_METADATA"]).DataAsNumpy().tobytes()
    assert meta[4:8] == b"M001"
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        assert z.namelist() == ["labels.txt"]
        assert z.read("labels.txt").decode("utf-8").split("\n") == LABELS


@needs_tool
@pytest.mark.parametrize("model", ["int8"], indirect=True)
def test_writing_again_replaces_the_metadata(model):
    tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)
    before = run(model)
    new_labels = [f"other {i}" for i in range(10)]
    result = tm.write_metadata(model, labels=new_labels, mean=[127.5], std=[127.5], **ARGS)
    md = tm.read_metadata(model)
    assert result["written"] and md["labels"] == new_labels and md["mean"] == [127.5] and md["std"] == [127.5]
    assert not any("per-channel" in n for n in result["notes"])  # one value for all channels: MediaPipe takes it
    assert md["associated_files"] == ["labels.txt"]
    assert run(model)[0].tobytes() == before[0].tobytes()


@needs_tool
@pytest.mark.parametrize("model", ["fp32"], indirect=True)
def test_file_mode_follows_the_umask(model):
    os.chmod(model, 0o600)  # not preserved: the rewritten file is a new file, made like any other
    old = os.umask(0o002)
    try:
        tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)
    finally:
        os.umask(old)
    assert model.stat().st_mode & 0o777 == 0o664


@needs_tool
@pytest.mark.parametrize("model", ["fp32"], indirect=True)
def test_a_failing_tool_leaves_the_file_unchanged(model, monkeypatch):
    original = folder(model)

    def boom(self):
        raise ValueError("simulated failure inside the populator")

    monkeypatch.setattr(TOOL.image_classifier.MetadataWriter, "populate", boom)
    with pytest.raises(ConversionError, match="simulated failure"):
        tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)
    assert folder(model) == original


@needs_tool
@pytest.mark.parametrize("model", ["fp32"], indirect=True)
def test_a_failure_while_writing_leaves_the_file_unchanged(model, monkeypatch):
    """The new bytes are already in the temporary file when the disk fails: the original stays,
    and the temporary file is removed."""
    original = folder(model)
    seen = []

    def fsync_fails(fd):
        seen.append(os.fstat(fd).st_size)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="No space left"):
        tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)
    assert seen and seen[0] > len(original[model.name])  # it failed mid-way, with the model written
    assert folder(model) == original


@needs_tool
@pytest.mark.parametrize("model", ["fp32"], indirect=True)
def test_a_field_the_tool_would_drop_means_nothing_is_written(model):
    """tflite-support re-serialises the model through its 2023 schema. A field it does not know
    (here SubGraph.debug_metadata_index, newer than that schema) would be lost: refuse instead."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(model.read_bytes(), 0))
    m.subgraphs[0].debugMetadataIndex = 0
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), b"TFL3")
    model.write_bytes(bytes(b.Output()))
    original = folder(model)

    result = tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)
    assert result["written"] is False
    assert "debugMetadataIndex: 0 -> -1" in result["reason"]
    assert folder(model) == original


@needs_tool
@pytest.mark.parametrize("model", ["fp32"], indirect=True)
@pytest.mark.parametrize("kwargs,msg", [
    (dict(labels=LABELS[:9]), "9 labels for a model with 10 outputs"),
    (dict(labels=LABELS[:9] + ["two\nlines"]), "one non-empty line"),
    (dict(labels=LABELS[:9] + [" "]), "one non-empty line"),
    (dict(std=None), "both mean and std"),
    (dict(mean=[1.0, 2.0], std=[1.0, 2.0]), "1 or 3 values"),
    (dict(std=[58.0, 0.0, 57.0]), "std positive"),
])
def test_bad_arguments_are_refused_before_anything_is_written(model, kwargs, msg):
    original = folder(model)
    with pytest.raises(UserError, match=msg):
        tm.write_metadata(model, **{**dict(labels=LABELS, mean=MEAN, std=STD), **kwargs}, **ARGS)
    assert folder(model) == original


@pytest.mark.parametrize("model", ["fp32"], indirect=True)
def test_without_the_tool_nothing_is_written_and_the_reason_says_how_to_install_it(model, monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] == "tensorflow_lite_support"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorflow_lite_support", None)  # import fails as if absent
    original = folder(model)

    result = tm.write_metadata(model, labels=LABELS, mean=MEAN, std=STD, **ARGS)

    assert result["written"] is False and "tflite-support" in result["reason"]
    if os.uname().machine == "x86_64":
        assert "pip install --no-deps tflite-support==0.4.4" in result["reason"]
    assert folder(model) == original
    with pytest.raises(UserError, match="tflite-support"):
        tm.read_metadata(model)


@needs_tool
@pytest.mark.parametrize("model", ["fp32"], indirect=True)
def test_writing_metadata_does_not_import_tensorflow(model):
    """The build process keeps TensorFlow in a child process; tflite-support would import it."""
    code = ("import sys\nfrom edge.targets.tflite_metadata import write_metadata\n"
            f"r = write_metadata({str(model)!r}, labels=None, mean=[127.5], std=[127.5], input_name='i', "
            "output_name='o', description='d')\nassert r['written'], r\nprint('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    md = tm.read_metadata(model)
    assert md["labels"] is None and md["mean"] == [127.5] and md["associated_files"] == []
