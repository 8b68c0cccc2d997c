"""Hardening (issue 9): what broke when the tool was tried by a newcomer and with hostile input.
Each test names its item of the issue; each runs real builds of the `tiny` model (random weights),
real files and real processes, and fails on the old main (ed76632)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import edge
from edge.cli import main
from edge.models import MODELS

ASSETS = Path(__file__).parent / "assets"
PLANTED = f"{ASSETS / 'planted.py'}:build"
PHOTOS = Path(edge.__file__).parent / "assets" / "calib"
TINY = ["--model", "tiny", "--weights", "random"]
EDGE = [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())"]
QUICK = ["--runs", "1", "--warmup", "0"]


# ---------------------------------------------------------------- helpers

def cli(argv, capsys) -> tuple[int, str, str]:
    """edge's command line in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    c = capsys.readouterr()
    return code, c.out, c.err


def one_error(code: int, err: str, expected: int, *words: str) -> str:
    """Exactly one `edge: error:` line holding `words`, the expected exit code, no traceback."""
    assert code == expected, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("edge: error:")]
    assert len(errors) == 1, err
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def refused(argv, capsys, expected: int, *words: str) -> str:
    code, _, err = cli(argv, capsys)
    return one_error(code, err, expected, *words)


def run_edge(*argv, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """edge's command line in a fresh process."""
    return subprocess.run([*EDGE, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def copy(build: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "build"
    shutil.copytree(build, dest, symlinks=True)
    return dest


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def edit(folder: Path, change) -> dict:
    """Change a manifest in place: `change(m)` edits the dict."""
    m = manifest(folder)
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m, indent=2))
    return m


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def eval_folder(root: Path, classes=("0", "1")) -> Path:
    """An ImageFolder tree of built-in photos, two per class."""
    photos = sorted(PHOTOS.glob("*.jpg"))
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for p in photos[2 * i:2 * i + 2]:
            shutil.copy(p, root / c / p.name)
    return root


def model_file(tmp_path: Path, body: str, name: str = "net.py") -> str:
    f = tmp_path / name
    f.write_text("import sys\nimport torch\nimport torch.nn as nn\n\n" + body)
    return f"{f}:make"


# ---------------------------------------------------------------- builds shared by several tests

@pytest.fixture(scope="module")
def onnx_build(tmp_path_factory) -> Path:
    """A tiny fp32 ONNX build: OUT/onnx/{artifact, manifest.json, check.npz, labels.txt}."""
    out = tmp_path_factory.mktemp("onnx") / "tiny"
    edge.build("tiny", "onnx", weights="random", out=str(out))
    return out


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory) -> Path:
    """Item 5: `--target onnx`, then `--target torchscript-mobile`, into one --out."""
    out = tmp_path_factory.mktemp("two") / "tiny"
    edge.build("tiny", "onnx", weights="random", out=str(out))
    edge.build("tiny", "torchscript-mobile", weights="random", out=str(out))
    return out


@pytest.fixture(scope="module")
def planted_build(tmp_path_factory) -> tuple[Path, Path]:
    """A user's network (tests/assets/planted.py) built from a weights file."""
    import torch

    from edge.models.loading import resolve_model

    root = tmp_path_factory.mktemp("planted")
    weights = root / "planted.pt"
    torch.manual_seed(0)
    torch.save(resolve_model(PLANTED, (1, 3, 32, 32)).build().state_dict(), weights)
    out = root / "out"
    edge.build(PLANTED, "onnx", weights=str(weights), input_shape=(1, 3, 32, 32), out=str(out))
    return out, weights


# ---------------------------------------------------------------- 1. no code named by a build folder runs

def test_verify_and_explain_never_import_a_file_the_build_folder_names(planted_build, tmp_path, capsys):
    out, weights = planted_build
    out = copy(out, tmp_path)
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\nimport torch.nn as nn\n\n\n"
                    "def build():\n    return nn.Linear(1, 1)\n")
    edit(out / "onnx", lambda m: m["build"]["config"].update(model=f"{evil}:build"))
    evalset = eval_folder(tmp_path / "eval")
    plot = ["--plot", tmp_path / "explain.png"]

    code, _, err = cli(["verify", out], capsys)  # the check samples stored in the folder suffice
    assert code == 0, err
    refused(["verify", out, "--eval", evalset], capsys, 2, "--model")
    refused(["explain", out, *plot], capsys, 2, "--model")
    named = ["--model", f"{evil}:build", "--weights", weights]  # a file other than the one built
    refused(["verify", out, "--eval", evalset, *named], capsys, 2, "sha256")
    refused(["explain", out, *plot, *named], capsys, 2, "sha256")
    assert not marker.exists()

    # the file the build was made from, named on the command line, is what explain runs
    code, _, err = cli(["explain", out, *plot, "--brief", "--model", PLANTED, "--weights", weights], capsys)
    assert code == 0, err
    assert not marker.exists()


# ---------------------------------------------------------------- 2. files a manifest names stay in its folder

def _point_elsewhere(folder: Path, where: str, key: str, tmp_path: Path) -> None:
    """Move the file the manifest's `key` ("artifact" or "check") names to `where`, with a real
    file there whose sha256 matches, so that only the confinement rule can refuse it."""
    m = manifest(folder)
    name = m["artifact"] if key == "artifact" else m["check"]["file"]
    src = folder / name
    if where == "/etc/passwd":
        digest = sha256(Path(where))
    elif where == "link":
        outside = tmp_path / f"outside-{name}"
        shutil.move(src, outside)
        (folder / "link").symlink_to(outside)
        digest = sha256(outside)
    else:
        dest = folder / where
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)
        digest = sha256(dest)
    src.unlink(missing_ok=True)

    def change(m):
        if key == "artifact":
            m["artifact"], m["sha256"] = where, digest
        else:
            m["check"]["file"], m["check"]["sha256"] = where, digest
    edit(folder, change)


ELSEWHERE = ["/etc/passwd", "../../x", "sub/x", "link"]


@pytest.mark.parametrize("where", ELSEWHERE)
def test_an_artifact_outside_its_folder_is_refused(where, onnx_build, tmp_path, capsys):
    out = copy(onnx_build, tmp_path)
    _point_elsewhere(out / "onnx", where, "artifact", tmp_path)
    for argv in (["verify", out], ["explain", out, "--plot", tmp_path / "p.png"], ["bench", out, *QUICK]):
        refused(argv, capsys, 2, "an edge manifest names files")


@pytest.mark.parametrize("where", ELSEWHERE)
def test_check_samples_outside_their_folder_are_refused(where, onnx_build, tmp_path, capsys):
    out = copy(onnx_build, tmp_path)
    _point_elsewhere(out / "onnx", where, "check", tmp_path)
    refused(["verify", out], capsys, 2, "an edge manifest names files")


# ---------------------------------------------------------------- 3. a full disk

@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size) -> a folder on a fresh tmpfs of that size (a real full disk), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mounted = []

    def mount(size: str) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
        mounted.append(d)
        return d
    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("target,size", [("onnx", "8k"), ("onnx", "64k"), ("all", "32k"), ("all", "1m")],
                         ids=["onnx-export", "onnx-publish", "all-torchscript", "all-tflite"])
def test_a_full_disk_leaves_nothing_and_says_so(target, size, small_disk):
    """The disk fills up at different points: the ONNX export, the check samples written at
    publish, the .ptl (torch's own writer aborted the process), the TFLite conversion."""
    disk = small_disk(size)
    p = run_edge("build", *TINY, "--target", target, "--out", disk / "out")
    one_error(p.returncode, p.stderr, 1, "No space left on device")
    assert not [f for f in disk.rglob("*") if f.is_file()]


def test_a_full_disk_keeps_the_previous_build(small_disk, capsys):
    disk = small_disk("600k")
    out = disk / "out"
    code, _, err = cli(["build", *TINY, "--target", "onnx", "--out", out], capsys)
    assert code == 0, err
    before = {f.name: sha256(f) for f in (out / "onnx").iterdir()}
    (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 16 * 1024))
    code, _, err = cli(["build", *TINY, "--target", "onnx", "--out", out], capsys)
    one_error(code, err, 1, "No space left on device")
    assert {f.name: sha256(f) for f in (out / "onnx").iterdir()} == before
    assert [d.name for d in out.iterdir()] == ["onnx"]
    (disk / "filler").unlink()
    code, _, err = cli(["verify", out], capsys)
    assert code == 0, err


# ---------------------------------------------------------------- 4. a foreign manifest.json

WEB_MANIFEST = '{"name": "My App", "start_url": "/", "display": "standalone"}\n'


def test_a_web_apps_manifest_in_out_is_left_alone(tmp_path, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "manifest.json").write_text(WEB_MANIFEST)
    code, _, err = cli(["build", *TINY, "--target", "onnx", "--out", out], capsys)
    assert code == 0, err
    assert (out / "manifest.json").read_text() == WEB_MANIFEST
    assert manifest(out / "onnx")["target"] == "onnx"
    for argv in (["verify", out], ["bench", out, *QUICK]):  # the web app's manifest is skipped, and said so
        code, _, err = cli(argv, capsys)
        assert code == 0, err
        assert f"skipped {out / 'manifest.json'}: not an edge manifest" in err


@pytest.mark.parametrize("name,content", [("manifest.json", WEB_MANIFEST), ("notes.txt", "my notes\n")])
def test_foreign_files_in_the_target_folder_refuse_the_build_up_front(name, content, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "onnx").mkdir(parents=True)
    (out / "onnx" / name).write_text(content)
    code, _, err = cli(["build", *TINY, "--target", "onnx", "--out", out], capsys)
    one_error(code, err, 2, "not", "edge")
    assert "reference:" not in err and "[1/1]" not in err  # refused before loading or exporting anything
    assert (out / "onnx" / name).read_text() == content
    assert [p.name for p in (out / "onnx").iterdir()] == [name]
    assert not [p for p in out.iterdir() if p.name.startswith(".edge-")]


def test_a_foreign_file_beside_an_edge_build_refuses_the_next_build(onnx_build, tmp_path, capsys):
    out = copy(onnx_build, tmp_path)
    (out / "onnx" / "notes.txt").write_text("mine\n")
    before = {p.name: sha256(p) for p in (out / "onnx").iterdir()}
    code, _, err = cli(["build", *TINY, "--target", "onnx", "--out", out], capsys)
    one_error(code, err, 2, "notes.txt")
    assert {p.name: sha256(p) for p in (out / "onnx").iterdir()} == before


# ---------------------------------------------------------------- 5. several builds into one folder

def test_two_builds_into_one_folder_keep_both_and_bench_times_both(two_targets, capsys):
    assert sorted(p.parent.name for p in two_targets.glob("*/manifest.json")) == ["onnx", "torchscript-mobile"]
    code, out, err = cli(["bench", two_targets, *QUICK, "--json", "-"], capsys)
    assert code == 0, err
    assert sorted(r["manifest"]["target"] for r in json.loads(out)["results"]) == ["onnx", "torchscript-mobile"]


def test_bench_says_which_artifacts_it_skipped_and_why(two_targets, tmp_path, capsys):
    out = copy(two_targets, tmp_path)
    shutil.copy(out / "onnx" / manifest(out / "onnx")["artifact"], out / "onnx" / "old.onnx")
    shutil.copy(out / "onnx" / manifest(out / "onnx")["artifact"], out / "stray.tflite")
    (out / "notes.txt").write_text("not an artifact\n")
    code, stdout, err = cli(["bench", out, *QUICK], capsys)
    assert code == 0, err
    skipped = [ln for ln in err.splitlines() if "skipped" in ln]
    assert len(skipped) == 2, err
    assert any("old.onnx" in ln for ln in skipped) and any("stray.tflite" in ln for ln in skipped)
    assert all("no manifest" in ln for ln in skipped), skipped
    assert "notes.txt" not in err and "check.npz" not in err
    assert len([ln for ln in stdout.splitlines() if "tiny.fp32" in ln]) == 2  # both built artifacts timed


# ---------------------------------------------------------------- 6. files follow the umask

@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
                         ids=["umask022", "umask027"])
def test_published_files_follow_the_umask(umask, file_mode, dir_mode, tmp_path, capsys):
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        code, _, err = cli(["build", *TINY, "--target", "onnx", "--out", out], capsys)
        assert code == 0, err
        folder = out / "onnx"
        m = manifest(folder)
        assert {p.name for p in folder.iterdir()} == {m["artifact"], "manifest.json", "check.npz", "labels.txt"}
        assert mode(folder) == dir_mode
        assert {p.name: mode(p) for p in folder.iterdir()} == {p.name: file_mode for p in folder.iterdir()}
        reports = {"verify": ["verify", out], "explain": ["explain", out, "--plot", tmp_path / "e.png"],
                   "bench": ["bench", out, *QUICK]}
        for name, argv in reports.items():
            code, _, err = cli([*argv, "--json", tmp_path / f"{name}.json"], capsys)
            assert code == 0, err
            assert mode(tmp_path / f"{name}.json") == file_mode, name
        assert mode(tmp_path / "e.png") == file_mode
    finally:
        os.umask(old)


# ---------------------------------------------------------------- 7. budgets

@pytest.mark.parametrize("flag,value", [("--min-cosine", "nan"), ("--min-cosine", "2"),
                                        ("--min-top1-agreement", "5"), ("--max-drop", "-1")])
def test_budgets_out_of_range_are_refused_up_front(flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(["build", *TINY, "--target", "onnx", "--int8", flag, value, "--out", out], capsys)
    one_error(code, err, 2, flag)
    assert "reference:" not in err
    assert not out.exists()


def test_verify_refuses_a_nan_budget(onnx_build, capsys):
    refused(["verify", onnx_build, "--min-cosine", "nan"], capsys, 2, "--min-cosine")


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_manifest_never_holds_nan_or_infinity(tmp_path, capsys):
    """An artifact that reproduces its reference exactly has an infinite SQNR; the manifest and
    verify's JSON still are valid JSON."""
    net = model_file(tmp_path, "class Crop(nn.Module):\n    def forward(self, x):\n        return x[:, 0, 0, :10]\n\n\n"
                               "def make():\n    return Crop()\n")
    out = tmp_path / "out"
    code, _, err = cli(["build", "--model", net, "--input-shape", "1,3,16,16", "--weights", "random",
                        "--target", "torchscript-mobile", "--out", out], capsys)
    assert code == 0, err
    m = _strict_json((out / "torchscript-mobile" / "manifest.json").read_text())
    assert m["parity"]["passed"] and m["parity"]["sqnr_db"] is None  # infinite: written as null
    code, stdout, err = cli(["verify", out, "--json", "-"], capsys)
    assert code == 0, err
    _strict_json(stdout)


# ---------------------------------------------------------------- 8. high-bit-depth images

def test_a_16_bit_greyscale_png_keeps_its_brightness(tmp_path):
    from PIL import Image

    from edge.data import load_image

    grey = np.tile(np.linspace(10, 72, 64), (64, 1)).round().astype(np.uint8)  # mean 41
    Image.fromarray(grey, "L").save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert (tmp_path / "16.png").read_bytes()[24] == 16  # the PNG's bit depth
    pre = MODELS.get("tiny").image.source.preprocess
    mean, std = np.array(pre.mean)[:, None, None], np.array(pre.std)[:, None, None]
    level8 = load_image(tmp_path / "8.png", pre) * std + mean  # back to 0-255 pixel levels
    level16 = load_image(tmp_path / "16.png", pre) * std + mean
    assert abs(level8.mean() - 41) < 2
    assert abs(level16.mean() - level8.mean()) <= 1.0
    assert np.abs(level16 - level8).max() <= 1.0


# ---------------------------------------------------------------- 9. one line, the right exit code

CONV = "nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())"
BAD_MODELS = {
    "factory raises": ("def make():\n    raise ValueError('unknown width')\n", "raised ValueError: unknown width"),
    "factory needs arguments": (f"def make(width, depth):\n    return {CONV}\n", "needs arguments (width, depth)"),
    "forward raises": ("class N(nn.Module):\n    def forward(self, x):\n        raise RuntimeError('no')\n\n\n"
                       "def make():\n    return N()\n", "raised RuntimeError"),
    "input too small for its pooling": ("def make():\n    return nn.Sequential(nn.MaxPool2d(8), nn.Flatten())\n",
                                        "forward on inputs of shape 1,3,4,4"),
    "exits on import": (f"sys.exit(3)\n\n\ndef make():\n    return {CONV}\n", "sys.exit(3)"),
    "exits in its factory": ("def make():\n    sys.exit(0)\n", "sys.exit(0)"),
    "exits in forward": ("class N(nn.Module):\n    def forward(self, x):\n        sys.exit('bye')\n\n\n"
                         "def make():\n    return N()\n", "sys.exit('bye')"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_a_users_bad_network_is_one_line(case, tmp_path, capsys):
    body, words = BAD_MODELS[case]
    shape = "1,3,4,4" if "pooling" in case else "1,3,16,16"
    out = tmp_path / "out"
    refused(["build", "--model", model_file(tmp_path, body), "--input-shape", shape, "--weights", "random",
             "--target", "onnx", "--out", out], capsys, 2, words)
    assert not list(out.rglob("manifest.json")) if out.exists() else True


def test_sys_exit_in_a_model_file_is_not_a_silent_exit(tmp_path):
    net = model_file(tmp_path, "class N(nn.Module):\n    def forward(self, x):\n        sys.exit(0)\n\n\n"
                               "def make():\n    return N()\n")
    p = run_edge("build", "--model", net, "--input-shape", "1,3,16,16", "--weights", "random", "--target", "onnx",
                 "--out", tmp_path / "out")
    one_error(p.returncode, p.stderr, 2, "must not exit")


def _png(path: Path, width: int, height: int) -> None:
    """A black one-bit greyscale PNG, written row by row (small on disk whatever its size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_line(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "huge.png", 20000, 20000)  # 400 Mpixel, over twice PIL's limit
    assert (photos / "huge.png").stat().st_size < 1 << 20
    out = tmp_path / "out"
    refused(["build", *TINY, "--target", "onnx", "--int8", "--calib", photos, "--out", out], capsys, 2,
            "huge.png", "too large")
    assert not out.exists() or not list(out.rglob("manifest.json"))


def test_a_large_but_allowed_image_gives_no_bomb_warning(tmp_path, capsys, monkeypatch):
    """PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; an image in between is used,
    without PIL's warning text. (The limit is lowered so that the image can be small.)"""
    import warnings

    from PIL import Image

    largest = max(w * h for w, h in (Image.open(p).size for p in PHOTOS.glob("*.jpg")))  # the built-in photos
    side = int((1.5 * largest) ** 0.5)  # over the limit set below, and under twice it
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(sorted(PHOTOS.glob("*.jpg")) * 2):  # enough for calibration and a held-out check
        Image.open(p).convert("RGB").resize((side, side)).save(photos / f"{i}-{p.stem}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", largest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cli(["build", *TINY, "--target", "onnx", "--int8", "--calib", photos, "--out",
                            tmp_path / "out"], capsys)
    assert code == 0, err
    assert "DecompressionBomb" not in err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_an_input_shape_that_cannot_fit_in_memory_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    refused(["build", *TINY, "--target", "onnx", "--input-shape", "1,3,100000,100000", "--out", out], capsys, 2,
            "--input-shape 1,3,100000,100000")
    assert not out.exists()


def test_verify_explain_bench_refuse_a_manifest_claiming_a_huge_input(onnx_build, tmp_path, capsys):
    out = copy(onnx_build, tmp_path)
    huge = [1, 3, 100000, 100000]

    def claim(m):
        m["inputs"][0]["shape"] = m["inputs"][0]["model_shape"] = m["input"]["shape"] = huge
        m["build"]["config"]["input_shape"] = huge
    edit(out / "onnx", claim)
    for argv in (["verify", out], ["explain", out, "--plot", tmp_path / "p.png"], ["bench", out, *QUICK]):
        refused(argv, capsys, 2, "1,3,100000,100000")


@pytest.mark.parametrize("key", ["check", "build", "inputs", "outputs", "parity", "precision", "target", "sha256",
                                 "artifact"])
def test_a_manifest_missing_a_field_is_one_line(key, onnx_build, tmp_path, capsys):
    out = copy(onnx_build, tmp_path)
    edit(out / "onnx", lambda m: m.pop(key))
    if key == "inputs":  # an older manifest: the schema-1 fields describe the one input
        edit(out / "onnx", lambda m: m.pop("outputs"))
    for argv in (["verify", out], ["explain", out, "--plot", tmp_path / "p.png"]):
        code, _, err = cli(argv, capsys)
        assert "Traceback" not in err and "KeyError" not in err, err
        if code != 0:
            one_error(code, err, 2)
    if key in ("artifact", "check", "sha256", "target", "precision"):  # nothing to check without these
        refused(["verify", out], capsys, 2)


def test_explain_to_an_unwritable_plot_is_one_line(onnx_build, capsys):
    refused(["explain", onnx_build, "--plot", "/etc/passwd/explain.png"], capsys, 2, "--plot")


def test_explain_on_a_read_only_build_folder_is_one_line(onnx_build, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs (root ignores file permissions)")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(ro)], check=True)
    try:
        shutil.copytree(onnx_build, ro / "build")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        refused(["explain", ro / "build"], capsys, 2, "--plot")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize("device,words", [("ssh://user@[::1", "ssh://user@[::1"), ("ssh://host:0", "port"),
                                          ("ssh://host:70000", "port")])
def test_a_bad_device_url_is_one_line(device, words, onnx_build, capsys):
    refused(["bench", onnx_build, *QUICK, "--device", device], capsys, 2, words)


def test_the_ssh_hint_quotes_what_the_user_typed(onnx_build, capsys):
    import shlex

    line = refused(["bench", onnx_build, *QUICK, "--device", "ssh://o'brien@no such host.invalid:2222",
                    "--ssh-option", "ConnectTimeout=5"], capsys, 1, "try: ssh")
    hint = line.split("try: ", 1)[1].rsplit(")", 1)[0]
    assert shlex.split(hint) == ["ssh", "-p", "2222", "o'brien@no such host.invalid", "true"]


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_nan_in_calibration_arrays_is_one_line(suffix, tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    x[3, 1, 2, 2] = np.nan
    path = tmp_path / f"calib{suffix}"
    np.save(path, x) if suffix == ".npy" else np.savez(path, input=x)
    out = tmp_path / "out"
    refused(["build", *TINY, "--target", "onnx", "--int8", "--calib", path, "--out", out], capsys, 2, "NaN")
    assert not out.exists() or not list(out.rglob("manifest.json"))


# ONNX: its whole int8 stage took 1.3 s on 1,000 samples on a quiet machine, so a 2 s delay let the
# build finish and the signal land at exit (returncode -2); 3,000 samples and 0.5 s land in calibration.
@pytest.mark.parametrize("target,delay", [("torchscript-mobile", 1.0), ("onnx", 0.5)])
def test_ctrl_c_during_quantization_is_interrupted_not_a_failure(target, delay, tmp_path):
    """SIGINT to the process group a second or two into the int8 stage: FX quantization is then
    importing parts of torch (cut short, they fail later with an AttributeError), ONNX is exporting
    or calibrating. Either way it is an interrupt: exit 130, no failure reported, nothing left."""
    calib = tmp_path / "calib.npy"  # enough samples that quantization lasts several seconds
    np.save(calib, np.random.default_rng(0).normal(size=(3000, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "out"
    proc = subprocess.Popen([*EDGE, "build", *TINY, "--target", target, "--int8", "--calib", str(calib),
                             "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as from a terminal: a runner started in the background (`cmd &` in a script)
                            # passes SIGINT on ignored, and Python then never sees Ctrl-C at all
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stderr:  # wait until the target's int8 stages begin
        lines.append(line)
        if f"[1/1] {target} int8" in line:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
            break
    err = "".join(lines) + proc.stderr.read()
    proc.wait(timeout=120)
    assert any("[1/1]" in ln for ln in lines), err
    assert proc.returncode == 130, err
    assert "edge: interrupted" in err and "Traceback" not in err and "failed" not in err, err
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_a_pickled_model_as_weights_says_save_the_state_dict(tmp_path, capsys):
    import torch

    path = tmp_path / "whole.pt"
    torch.save(MODELS.get("tiny").build(), path)
    line = refused(["build", "--model", "tiny", "--weights", path, "--target", "onnx", "--out", tmp_path / "o"],
                   capsys, 2, "save the model's state_dict()")
    assert "\x1b" not in line


def _labelled(tmp_path: Path, rows: list[tuple[str, int]]) -> Path:
    d = tmp_path / "eval"
    (d / "images").mkdir(parents=True)
    for p in sorted(PHOTOS.glob("*.jpg"))[:len(rows)]:
        shutil.copy(p, d / "images" / p.name)
    names = [p.name for p in sorted(PHOTOS.glob("*.jpg"))[:len(rows)]]
    (d / "labels.csv").write_text("file,class_index\n" + "".join(f"{n},{c}\n" for n, (_, c) in zip(names, rows)))
    return d


def test_a_label_below_minus_one_is_an_error(tmp_path, capsys):
    evalset = _labelled(tmp_path, [("a", 1), ("b", -2), ("c", 3)])
    refused(["build", *TINY, "--target", "onnx", "--eval", evalset, "--out", tmp_path / "out"], capsys, 2,
            "class index -2", "line 3")


def test_an_eval_set_of_a_single_class_warns(tmp_path, capsys):
    evalset = eval_folder(tmp_path / "eval", classes=("3",))
    code, _, err = cli(["build", *TINY, "--target", "onnx", "--eval", evalset, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "single class" in err


def test_an_artifact_named_like_an_option_is_benched(onnx_build, tmp_path, capsys):
    art = onnx_build / "onnx" / manifest(onnx_build / "onnx")["artifact"]
    odd = tmp_path / "-x.onnx"
    shutil.copy(art, odd)
    code, out, err = cli(["bench", odd, *QUICK], capsys)
    assert code == 0, err
    assert "-x.onnx" in out


DOUBLE = ("class N(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
          "        self.conv = nn.Conv2d(3, 8, 3, padding=1)\n        self.fc = nn.Linear(8, 4)\n\n"
          "    def forward(self, x):\n        y = self.conv(x).double() * 1.000001  # float64: TFLite cannot\n"
          "        return self.fc(y.float().mean((2, 3)))\n\n\ndef make():\n    return N()\n")


def test_target_all_publishes_what_passed_and_names_what_failed(tmp_path, capsys):
    """A network that converts for TorchScript, ONNX and ExecuTorch (its float64 ops stay on the
    portable kernels) but not for TFLite (float64 arithmetic): the three are published, and the one
    line says that TFLite failed and what was published."""
    out = tmp_path / "out"
    code, _, err = cli(["build", "--model", model_file(tmp_path, DOUBLE), "--input-shape", "1,3,16,16",
                        "--weights", "random", "--target", "all", "--out", out], capsys)
    line = one_error(code, err, 1, "tflite fp32", "published: torchscript-mobile, onnx, executorch")
    assert "\x1b" not in line
    assert sorted(p.parent.name for p in out.glob("*/manifest.json")) == ["executorch", "onnx", "torchscript-mobile"]
    assert not (out / "tflite").exists()
    code, _, err = cli(["verify", out], capsys)
    assert code == 0, err


# ---------------------------------------------------------------- 10. the Python API

def test_every_public_function_works_twice_in_one_process(tmp_path):
    import edge.benchmark  # noqa: F401  (the submodules that once replaced the functions)
    import edge.explaining  # noqa: F401

    for i in range(2):
        out = tmp_path / f"out{i}"
        m = edge.build("tiny", "onnx", weights="random", out=str(out))
        assert m["target"] == "onnx" and m["parity"]["passed"]
        assert [r["passed"] for r in edge.verify(str(out))] == [True]
        [r] = edge.explain(str(out), samples=2)
        assert r["target"] == "onnx" and r["layers"]
        [b] = edge.bench(str(out), runs=1, warmup=0)
        assert b["manifest"]["target"] == "onnx" and b["latency_ms"]["mean"] > 0
    assert all(callable(getattr(edge, f)) for f in ("build", "verify", "explain", "bench"))


# ---------------------------------------------------------------- 11. the README's first command, offline

OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def test_offline_pretrained_weights_suggest_random_and_say_what_it_shows(tmp_path):
    """No cached torchvision weights (an empty TORCH_HOME) and no network (a proxy that refuses)."""
    out = tmp_path / "out"
    p = run_edge("build", "--model", "mobilenetv2", "--target", "tflite", "--int8", "--out", out,
                 env={**OFFLINE, "TORCH_HOME": str(tmp_path / "torch")})
    line = one_error(p.returncode, p.stderr, 2, "--weights random", "speed", "accuracy is not")
    assert "cosine" in line
    assert not out.exists() or not [f for f in out.rglob("*") if f.is_file()]


def test_a_random_weights_int8_build_passes_judged_on_cosine_and_sqnr(tmp_path, capsys):
    """MobileNetV2 with random weights, int8 TFLite: top-1 agreement on random logits is noise (it
    was judged, and failed after a minute); cosine and SQNR tell whether the artifact is right."""
    out = tmp_path / "out"
    code, _, err = cli(["build", "--model", "mobilenetv2", "--target", "tflite", "--int8", "--weights", "random",
                        "--input-shape", "1,3,96,96", "--out", out], capsys)
    assert code == 0, err
    parity = manifest(out / "tflite")["parity"]
    assert "cosine" in parity["judged_on"] and "SQNR" in parity["judged_on"]
    assert set(parity["budget"]) <= {"max_abs", "max_rel_abs", "min_cosine", "min_sqnr_db"}
    assert parity["mean_cosine"] >= parity["budget"]["min_cosine"] > 0.5


# ---------------------------------------------------------------- 12. start-up and listing

@pytest.mark.parametrize("argv", [["--help"], ["build", "--help"], ["models"], ["targets"]])
def test_help_and_listings_do_not_import_torch(argv):
    code = ("import sys\nfrom edge.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime') if m in sys.modules]\n"
            "assert not heavy, heavy\n" % (argv,))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()


def test_the_model_catalog_lists_every_registered_model():
    from edge.models.catalog import entries

    assert [e["name"] for e in entries()] == MODELS.names()


@pytest.mark.parametrize("name", MODELS.names())
def test_the_model_catalog_is_current(name):
    """`edge models` lists the catalog (data: no torch, nothing built); it must say what the
    registry builds. Each network is built once here (a few seconds each, under 30 s in all)."""
    from edge.models.catalog import count, entries

    spec = MODELS.get(name)
    e = next(e for e in entries() if e["name"] == name)
    assert e["inputs"] == [i.to_json() for i in spec.inputs]
    assert e["outputs"] == [o.to_json() for o in spec.outputs]
    assert (e["params"], e["macs"]) == count(spec)


# ---------------------------------------------------------------- 13. conventions

def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"edge {edge.__version__}"


def test_quiet_verbose_and_debug_after_the_subcommand(onnx_build, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_DEBUG", "")  # --debug sets it for this process; undone after the test
    code, _, err = cli(["verify", onnx_build, "-q"], capsys)
    assert code == 0 and "parity ok" not in err, err
    code, _, err = cli(["verify", onnx_build, "-v"], capsys)
    assert code == 0 and "parity ok" in err, err
    with pytest.raises(edge.errors.UserError):  # --debug: the exception itself, not one line
        main(["build", "--model", "nope", "--debug"])


@pytest.mark.parametrize("command", ["bench", "verify", "explain", "models", "targets"])
def test_json_dash_writes_to_stdout(command, onnx_build, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = {"bench": ["bench", onnx_build, *QUICK], "verify": ["verify", onnx_build],
            "explain": ["explain", onnx_build, "--plot", tmp_path / "p.png", "--samples", "2"],
            "models": ["models"], "targets": ["targets"]}[command]
    code, out, err = cli([*argv, "--json", "-"], capsys)
    assert code == 0, err
    assert json.loads(out)["schema"].startswith("edge-")
    assert not (tmp_path / "-").exists()


def _helps() -> dict[str, str]:
    from edge.cli import parser

    p = parser()
    subs = p._subparsers._group_actions[0].choices
    helps = {"edge": p.format_help(), **{name: s.format_help() for name, s in subs.items()}}
    device = subs["device"]._subparsers._group_actions[0].choices
    helps.update({f"device {name}": s.format_help() for name, s in device.items()})
    return helps


def test_help_shows_defaults_but_never_none_or_false():
    helps = _helps()
    assert "(default: efficientnet_lite0)" in helps["build"] and "(default: 50)" in helps["bench"]
    for name, text in helps.items():
        flat = " ".join(text.split())
        assert "(default: None)" not in flat and "(default: False)" not in flat, name


def test_verify_junit_has_one_case_per_artifact_with_its_figures(two_targets, tmp_path, capsys):
    import xml.etree.ElementTree as ET

    junit = tmp_path / "verify.xml"
    code, _, err = cli(["verify", two_targets, "--junit", junit], capsys)
    assert code == 0, err
    suite = ET.parse(junit).getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 2 and suite.get("failures") == "0"
    for case in cases:
        props = {p.get("name"): float(p.get("value")) for p in case.iter("property")}
        assert props["output.min_cosine"] > 0.99 and "output.sqnr_db" in props
        assert case.find("failure") is None


def test_verify_junit_records_a_failure(two_targets, tmp_path, capsys):
    import xml.etree.ElementTree as ET

    junit = tmp_path / "verify.xml"
    code, _, err = cli(["verify", two_targets, "--min-sqnr-db", "500", "--junit", junit], capsys)
    one_error(code, err, 1, "sqnr_db")
    suite = ET.parse(junit).getroot()
    assert [c.find("failure") is not None for c in suite.findall("testcase")] == [True, True]
    assert suite.get("failures") == "2"

    out = copy(two_targets, tmp_path)
    check = out / "onnx" / "check.npz"
    check.write_bytes(check.read_bytes()[:-10] + b"0123456789")  # tampered
    code, _, err = cli(["verify", out, "--junit", junit], capsys)
    one_error(code, err, 1, "check.npz")
    cases = {c.get("classname"): c for c in ET.parse(junit).getroot().findall("testcase")}
    assert cases["edge.onnx"].find("failure") is not None
    assert cases["edge.torchscript-mobile"].find("failure") is None


@pytest.mark.parametrize("command", ["models", "targets"])
def test_listings_fit_100_columns(command, capsys):
    code, out, _ = cli([command], capsys)
    assert code == 0
    assert max(len(ln) for ln in out.splitlines()) <= 100, out


@pytest.fixture(scope="module")
def ptl_int8(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """A tiny int8 TorchScript-mobile build, then verify and explain of it, each in a fresh process."""
    root = tmp_path_factory.mktemp("ptl")
    out = root / "tiny"
    runs = {"build": run_edge("build", *TINY, "--target", "torchscript-mobile", "--int8", "--out", out)}
    runs["verify"] = run_edge("verify", out)
    runs["explain"] = run_edge("explain", out, "--plot", root / "explain.png")
    for name, p in runs.items():
        assert p.returncode == 0, f"{name}: {p.stderr}"
    return runs


def test_verify_and_explain_do_not_print_the_calibration_warning(ptl_int8):
    assert "calibrating on" in ptl_int8["build"].stderr  # build can act on it
    for name in ("verify", "explain"):
        assert "calibrat" not in ptl_int8[name].stderr, ptl_int8[name].stderr


@pytest.fixture(scope="module")
def tflite_build(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A tiny int8 TFLite build in a fresh process (its stderr is what a user sees)."""
    out = tmp_path_factory.mktemp("tflite") / "tiny"
    p = run_edge("build", *TINY, "--target", "tflite", "--int8", "--out", out)
    assert p.returncode == 0, p.stderr
    return out, p


def test_tflite_build_and_bench_keep_native_chatter_off_stderr(tflite_build):
    out, build = tflite_build
    bench = run_edge("bench", out, *QUICK)
    assert bench.returncode == 0, bench.stderr
    for p in (build, bench):
        assert "XNNPACK" not in p.stderr, p.stderr
        assert not [ln for ln in p.stderr.splitlines() if ln.startswith("[W")], p.stderr


def test_torchscript_int8_build_verify_and_explain_print_no_cpp_warnings(ptl_int8):
    """torch's C++ deprecation lines ("[W... Quantizer.cpp] Warning: torch.quantize_per_tensor ...")."""
    for name, p in ptl_int8.items():
        assert not [ln for ln in p.stderr.splitlines() if ln.startswith("[W")], f"{name}: {p.stderr}"


# ---------------------------------------------------------------- 14. progress

def test_progress_without_a_terminal_has_no_carriage_returns(tflite_build):
    _, p = tflite_build
    assert "\r" not in p.stderr
    assert "reference pass" not in p.stderr or "done in" in p.stderr
    assert "tflite int8: onnx2tf + TFLite converter" in p.stderr


def test_a_long_loop_without_a_terminal_says_how_far_it_is(monkeypatch, capsys):
    """Off a terminal, a loop longer than PLAIN_EVERY seconds gets a line with its count between the
    start and end lines (a 48-trial pruning scan is minutes of silence otherwise)."""
    import logging

    from edge import progress

    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    level = logging.getLogger("edge").level
    logging.getLogger("edge").setLevel(logging.INFO)
    try:
        monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
        assert list(progress.bar(range(10), "scan", unit="trial")) == list(range(10))
        monkeypatch.setattr(progress, "PLAIN_EVERY", 3600.0)
        list(progress.bar(range(10), "quick"))
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("edge").setLevel(level)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("edge: scan:")]
    assert lines[0] == "edge: scan: 10 trials" and lines[-1].startswith("edge: scan: done in"), err
    assert [ln.split()[2] for ln in lines[1:-1]] == [f"{i}/10" for i in range(1, 10)], err
    assert [ln for ln in err.splitlines() if ln.startswith("edge: quick:")][1].startswith("edge: quick: done"), err
    assert "\r" not in err


def test_onnx_calibration_shows_progress(tmp_path):
    p = run_edge("build", *TINY, "--target", "onnx", "--int8", "--out", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "edge: onnx calibration:" in p.stderr and "\r" not in p.stderr, p.stderr


def test_fx_calibration_shows_progress(tmp_path):
    x = np.random.default_rng(0).normal(size=(160, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    p = run_edge("build", *TINY, "--target", "torchscript-mobile", "--int8", "--calib", tmp_path / "calib.npy",
                 "--out", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "edge: fx calibration:" in p.stderr and "\r" not in p.stderr, p.stderr


# ---------------------------------------------------------------- 15/16. what the phone needs

def test_a_classifier_build_writes_one_label_per_class(onnx_build):
    m = manifest(onnx_build / "onnx")
    labels = (onnx_build / "onnx" / m["labels"]).read_text().splitlines()
    assert labels == [str(i) for i in range(10)]  # tiny: 10 classes, no class names


def test_a_tflite_classifier_carries_its_metadata(tflite_build):
    import importlib.util

    if importlib.util.find_spec("tensorflow_lite_support") is None:
        pytest.skip("tflite-support (which writes and reads TFLite metadata) is not installed")
    from edge.targets.tflite_metadata import read_metadata

    out, _ = tflite_build
    m = manifest(out / "tflite")
    md = read_metadata(out / "tflite" / m["artifact"])
    assert md is not None and md["labels"][:10] == [str(i) for i in range(10)]
    assert md["mean"] == pytest.approx([123.675, 116.28, 103.53], abs=1e-3)
    assert m["target_details"]["metadata"]["written"]
