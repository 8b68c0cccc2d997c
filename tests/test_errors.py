"""Bad input: one or two lines that say what is wrong and what to do, exit 2 for the user's
mistakes and 1 for conversion or parity failures, no traceback, and nothing left in the output
folder that looks finished."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge.cli import main


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("edge: error:")]
    return code, errors, err


def assert_clean(out: Path):
    """No artifact or manifest anywhere below the output folder (hidden staging is gone too)."""
    if out.exists():
        left = [p for p in out.rglob("*") if p.is_file()]
        assert not left, f"files left behind: {left}"


def fail(argv, capsys, code, *words, out=None):
    got, errors, err = run(argv, capsys)
    assert got == code, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in errors[0], errors[0]
    if out is not None:
        assert_clean(out)
    return errors[0]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_unknown_model(out, capsys):
    fail(["build", "--model", "mobilenetv9", "--out", str(out)], capsys, 2, "unknown model", "mobilenetv2", out=out)


def test_unknown_target(out, capsys):
    fail(["build", "--model", "tiny", "--target", "coreml", "--out", str(out)], capsys, 2, "unknown target",
         "tflite", out=out)


@pytest.mark.parametrize("argv,words", [
    (["--target", "onnx", "--fp16"], ["onnx", "fp16"]),
    (["--target", "torchscript-mobile", "--fp16"], ["torchscript-mobile", "fp16"]),
    (["--target", "onnx", "--int8", "--io", "int8"], ["--io int8", "onnx"]),
    (["--target", "tflite", "--io", "int8"], ["--io int8", "--int8"]),
    (["--target", "tflite", "--calib-method", "entropy"], ["--calib-method", "--int8"]),
])
def test_impossible_combinations(argv, words, out, capsys):
    fail(["build", "--model", "tiny", "--weights", "random", "--out", str(out), *argv], capsys, 2, *words, out=out)


def test_missing_calib_folder(out, tmp_path, capsys):
    fail(["build", "--model", "tiny", "--weights", "random", "--int8", "--target", "onnx",
          "--calib", str(tmp_path / "nope"), "--out", str(out)], capsys, 2, "does not exist", out=out)


def test_empty_calib_folder(out, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fail(["build", "--model", "tiny", "--weights", "random", "--int8", "--target", "onnx",
          "--calib", str(tmp_path / "empty"), "--out", str(out)], capsys, 2, "holds no images", out=out)


def test_calib_folder_without_images(out, tmp_path, capsys):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "notes.txt").write_text("not an image")
    fail(["build", "--model", "tiny", "--weights", "random", "--int8", "--target", "onnx",
          "--calib", str(d), "--out", str(out)], capsys, 2, "holds no images", out=out)


def test_calib_folder_with_corrupt_image(out, tmp_path, capsys):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    fail(["build", "--model", "tiny", "--weights", "random", "--int8", "--target", "onnx",
          "--calib", str(d), "--out", str(out)], capsys, 2, "broken.jpg", "not a readable image", out=out)


def test_corrupt_weights(out, tmp_path, capsys):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"garbage" * 100)
    fail(["build", "--model", "tiny", "--weights", str(bad), "--out", str(out)], capsys, 2,
         "cannot load weights", out=out)


def test_unsafe_pickle_is_refused(out, tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    fail(["build", "--model", "tiny", "--weights", str(path), "--out", str(out)], capsys, 2,
         "not a valid, safe checkpoint", out=out)


def test_mismatched_weights(out, tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save({"model": torch.nn.Linear(3, 4).state_dict()}, path)
    fail(["build", "--model", "tiny", "--weights", str(path), "--out", str(out)], capsys, 2,
         "do not fit tiny", "missing", out=out)


def test_imagenet_weights_unavailable_offline(out, capsys, monkeypatch):
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-edge-test-cache")

    def offline(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    fail(["build", "--model", "mobilenetv2", "--out", str(out)], capsys, 2, "--weights PATH", "--weights random",
         out=out)


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fail(["build", "--model", "tiny", "--weights", "random", "--out", str(blocker / "out")], capsys, 2,
         "cannot write to output folder")


def test_missing_optional_dependency(out, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    fail(["build", "--model", "tiny", "--weights", "random", "--target", "onnx", "--out", str(out)], capsys, 2,
         "onnxruntime", "pip install", out=out)


def test_custom_model_needs_input_shape(out, tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\ndef make():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    fail(["build", "--model", f"{f}:make", "--weights", "random", "--out", str(out)], capsys, 2,
         "--input-shape", out=out)


def test_custom_model_without_weights_names_the_file_and_factory(out, tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\ndef make():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    fail(["build", "--model", f"{f}:make", "--input-shape", "1,3,8,8", "--out", str(out)], capsys, 2,
         f"--model {f}:make is a custom network", "--weights random", out=out)


def test_custom_model_missing_factory(out, tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("x = 1\n")
    fail(["build", "--model", f"{f}:make", "--input-shape", "1,3,32,32", "--weights", "random",
          "--out", str(out)], capsys, 2, "make", out=out)


def test_parity_miss_exits_1_and_says_by_how_much(out, capsys):
    msg = fail(["build", "--model", "tiny", "--weights", "random", "--target", "onnx", "--min-sqnr-db", "500",
                "--out", str(out)], capsys, 1, "parity check failed", "missed by", out=out)
    assert "sqnr_db" in msg and "nothing published" in msg


def test_conversion_failure_exits_1(out, tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\nclass N(torch.nn.Module):\n"
                 "    def forward(self, x):\n        return torch.fft.fft2(x).real\n"
                 "def make():\n    return N()\n")
    fail(["build", "--model", f"{f}:make", "--input-shape", "1,3,16,16", "--weights", "random", "--target",
          "onnx", "--out", str(out)], capsys, 1, "export failed", out=out)


def test_console_script_has_no_traceback(tmp_path):
    edge = Path(sys.executable).with_name("edge")
    p = subprocess.run([str(edge), "build", "--model", "nope", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("edge: error: unknown model 'nope'")
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_killed_build_leaves_staging_that_the_next_build_removes(out, capsys):
    """SIGKILL leaves no chance to clean up: the hidden staging folder stays (never a manifest, so
    nothing that looks finished), and the next build into the same folder removes it. A staging
    folder whose process still runs (here: this one's pid) is another build at work and stays."""
    import os
    import signal
    import time

    edge = [sys.executable, "-c", "from edge.cli import main; raise SystemExit(main())"]
    proc = subprocess.Popen([*edge, "build", "--model", "tiny", "--weights", "random", "--target", "tflite",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(".edge-build-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = list(out.glob(".edge-build-*"))
    assert [d.name.split("-")[2] for d in stale] == [str(proc.pid)]
    assert not list(out.rglob("manifest.json"))
    busy = out / f".edge-build-{os.getpid()}-busy"
    busy.mkdir()
    assert main(["build", "--model", "tiny", "--weights", "random", "--target", "onnx", "--out", str(out)]) == 0
    assert not any(d.exists() for d in stale) and busy.is_dir()
    assert (out / "onnx" / "manifest.json").is_file()


def test_model_torch_export_cannot_capture_names_the_construct(out, tmp_path, capsys):
    """executorch: a forward that branches on a tensor's value cannot be captured by torch.export;
    one line says so and where, exit 1."""
    f = tmp_path / "branchy.py"
    f.write_text("import torch\nclass N(torch.nn.Module):\n"
                 "    def __init__(self):\n        super().__init__()\n        self.conv = torch.nn.Conv2d(3, 4, 3)\n"
                 "    def forward(self, x):\n        y = self.conv(x)\n"
                 "        if y.mean() > 0:\n            return y * 2\n        return y\n"
                 "def make():\n    return N()\n")
    for precision in ("fp32", "int8"):
        msg = fail(["build", "--model", f"{f}:make", "--input-shape", "1,3,16,16", "--weights", "random",
                    "--target", "executorch", "--precision", precision, "--out", str(out)], capsys, 1,
                   "torch.export cannot capture the model", out=out)
        assert "branchy.py" in msg or "data-dependent" in msg or "control flow" in msg, msg


def test_missing_executorch_exits_2(out, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # find_spec now says it is not installed
    fail(["build", "--model", "tiny", "--weights", "random", "--target", "executorch", "--out", str(out)], capsys, 2,
         "executorch", "pip install 'edge[executorch]'", out=out)
