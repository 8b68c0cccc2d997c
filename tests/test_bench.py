"""edge bench and the on-device runner: exact statistics, the runner's JSON contract in each
runtime (its output checked against edge's own runners), bench() over a build folder in fresh
processes, one-line errors for bad input, and a runner that imports only stdlib and numpy."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge
from edge.benchmark import bench, format_table, write_json
from edge.device import RUNNER, runner, write_runner
from edge.errors import UserError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
LATENCY_KEYS = {"mean", "std", "min", "p50", "p90", "p99"}
CONTRACT = {"schema": str, "artifact": str, "path": str, "format": str, "runtime": dict, "size_bytes": int,
            "load_ms": float, "first_inference_ms": float, "warmup": int, "runs": int, "threads": int,
            "latency_ms": dict, "peak_rss_bytes": int, "input": dict, "output": dict, "environment": dict}
ENVIRONMENT_KEYS = {"cpu_model", "cores", "governor", "machine", "os", "python", "numpy", "runtimes"}
FORMATS = {"onnx": "onnx", "tflite": "tflite", "torchscript-mobile": "ptl"}


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def fp32_build(tmp_path_factory) -> Path:
    """A tiny fp32 build for all three targets: OUT/<target>/{artifact, manifest.json}."""
    out = tmp_path_factory.mktemp("build") / "tiny"
    edge.build(model="tiny", target="all", precision="fp32", weights="random", out=str(out))
    return out


@pytest.fixture(scope="module")
def int8_tflite(tmp_path_factory) -> Path:
    """A tiny int8 TFLite build with int8 input and output tensors."""
    out = tmp_path_factory.mktemp("build") / "tiny-int8"
    edge.build(model="tiny", target="tflite", precision="int8", io="int8", weights="random", out=str(out))
    return out


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> Path:
    """runner.py as copied to a device, away from the package."""
    return write_runner(tmp_path_factory.mktemp("device"))


def artifact_in(folder: Path) -> Path:
    return folder / json.loads((folder / "manifest.json").read_text())["artifact"]


def run_runner(runner_path: Path, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(runner_path), *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=300)


def one_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("runner: error:")]
    assert proc.returncode == code, proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- statistics

def test_summarize_known_timings():
    s = runner.summarize([float(v) for v in range(10, 0, -1)])  # 1..10, unsorted
    assert s["mean"] == 5.5 and s["min"] == 1.0 and s["p50"] == 5.5
    assert s["p90"] == pytest.approx(9.1, abs=1e-12) and s["p99"] == pytest.approx(9.91, abs=1e-12)
    assert s["std"] == pytest.approx(8.25 ** 0.5, abs=1e-12)  # population std, like numpy.std


def test_summarize_matches_numpy(rng):
    t = rng.lognormal(0.0, 0.5, 101).tolist()
    s = runner.summarize(t)
    p = np.percentile(t, [50, 90, 99])
    assert [s["p50"], s["p90"], s["p99"]] == pytest.approx(p.tolist(), rel=1e-12)
    assert s["mean"] == pytest.approx(np.mean(t), rel=1e-12) and s["std"] == pytest.approx(np.std(t), rel=1e-12)


def test_summarize_one_and_none():
    assert runner.summarize([2.5]) == {k: (0.0 if k == "std" else 2.5) for k in LATENCY_KEYS}
    with pytest.raises(ValueError):
        runner.summarize([])


def test_quantize_round_trip():
    x = np.array([-10.0, -0.26, 0.0, 0.24, 10.0], np.float32)
    q = runner.quantize(x, np.dtype("int8"), 0.05, 3)
    assert q.tolist() == [-128, -2, 3, 8, 127]  # clipped at both ends
    assert runner.dequantize(q, 0.05, 3).tolist() == pytest.approx([-6.55, -0.25, 0.0, 0.25, 6.2])


# ---------------------------------------------------------------- the runner stays self-contained

def module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level names of the modules imported outside functions and classes (try blocks included)."""
    names, stack = set(), list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue  # the runtimes are imported inside the code that needs them
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0] if node.module and not node.level else ".")
        stack.extend(ast.iter_child_nodes(node))
    return names


def test_runner_top_level_imports_are_stdlib_or_numpy():
    names = module_level_imports(ast.parse(RUNNER.read_text()))
    assert "numpy" in names and names - set(sys.stdlib_module_names) == {"numpy"}


def test_importing_the_runner_loads_no_runtime():
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('r', sys.argv[1]); "
            "s.loader.exec_module(importlib.util.module_from_spec(s)); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'edge', 'torch', 'onnxruntime', 'tensorflow', 'ai_edge_litert', 'tflite_runtime'}))")
    proc = subprocess.run([sys.executable, "-c", code, str(RUNNER)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_write_runner(tmp_path):
    path = write_runner(tmp_path / "to-pi")
    assert path == tmp_path / "to-pi" / "runner.py" and path.read_bytes() == RUNNER.read_bytes()
    readme = (tmp_path / "to-pi" / "README.md").read_text()
    assert "pip install ai-edge-litert numpy" in readme and "onnxruntime" in readme and "edge-bench/1" in readme


# ---------------------------------------------------------------- the runner's JSON contract

def check_contract(r: dict, fmt: str, runs: int) -> None:
    assert set(CONTRACT) <= set(r), set(CONTRACT) - set(r)
    for key, kind in CONTRACT.items():
        assert isinstance(r[key], kind), (key, r[key])
    assert r["schema"] == "edge-bench/1" and r["format"] == fmt and r["runs"] == runs and r["threads"] == 1
    assert isinstance(r["runtime"]["name"], str) and isinstance(r["runtime"]["version"], str)
    lat = r["latency_ms"]
    assert set(lat) == LATENCY_KEYS and all(isinstance(v, float) for v in lat.values())
    assert 0 <= lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] and lat["min"] <= lat["mean"]
    assert r["size_bytes"] == Path(r["path"]).stat().st_size and r["peak_rss_bytes"] > 0
    assert all(isinstance(d, int) for d in r["input"]["shape"] + r["output"]["shape"])
    assert ENVIRONMENT_KEYS <= set(r["environment"]) and r["environment"]["cores"] >= 1


@pytest.mark.parametrize("precision,target", [("fp32", "onnx"), ("fp32", "tflite"),
                                              ("fp32", "torchscript-mobile"), ("int8", "tflite")])
def test_runner_contract(precision, target, request, device, tmp_path):
    from edge.targets import TARGETS

    folder = request.getfixturevalue("int8_tflite") if precision == "int8" else \
        request.getfixturevalue("fp32_build") / target
    artifact, manifest = artifact_in(folder), json.loads((folder / "manifest.json").read_text())
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_runner(device, artifact, "--runs", 5, "--warmup", 1, "--threads", 1, "--input", tmp_path / "x.npy",
                      "--save-output", tmp_path / "y.npy", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r == json.loads((tmp_path / "r.json").read_text())
    check_contract(r, FORMATS[target], runs=5)
    assert r["input"]["shape"] == manifest["input"]["shape"] and r["input"]["layout"] == manifest["input"]["layout"]
    assert r["input"]["dtype"] == manifest["input"]["dtype"] and r["output"]["dtype"] == manifest["output"]["dtype"]
    # The device's (dequantized) output is what edge's own runner gives for the same input.
    expected = TARGETS.get(target).load(artifact, manifest).run(x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the runner's errors

def test_runner_errors(fp32_build, device, tmp_path):
    onnx = artifact_in(fp32_build / "onnx")
    alone = Path(shutil.copy(onnx, tmp_path / "alone.onnx"))
    one_error(run_runner(device, tmp_path / "nope.onnx"), 2, "no such file")
    one_error(run_runner(device, tmp_path / "notes.txt"), 2, "unknown artifact type")
    one_error(run_runner(device, alone), 2, "alone.onnx has no manifest.json", "--input-shape")
    one_error(run_runner(device, alone, "--input-shape", "1,3,16,16"), 2, "does not fit", "1,3,32,32")
    one_error(run_runner(device, onnx, "--input-shape", "1,3,16,16"), 2, "disagrees with the manifest")
    one_error(run_runner(device, onnx, "--runs", 0), 2, "--runs")
    one_error(run_runner(device, onnx, "--bogus"), 2, "--bogus")


# ---------------------------------------------------------------- bench()

def test_bench_build_folder(fp32_build, tmp_path, capsys):
    out = tmp_path / "two"
    for target in ("onnx", "tflite"):
        shutil.copytree(fp32_build / target, out / target)
    results = bench([str(out)], threads=1, runs=3, warmup=1, pin=None, input_shape=None, progress=True)
    assert [r["format"] for r in results] == ["onnx", "tflite"]
    for r, target in zip(results, ("onnx", "tflite")):
        check_contract(r, target, runs=3)
        assert r["manifest"] == {"target": target, "precision": "fp32", "model": "tiny"}
    assert capsys.readouterr().err.count("edge: bench [") == 2
    table = format_table(results).splitlines()
    assert len(table) == 3 and "p99" in table[0] and "onnx/tiny.fp32.onnx" in table[1] and " fp32 " in table[2]
    write_json(results, tmp_path / "bench.json")
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["schema"] == "edge-bench/1" and saved["results"] == results and "machine" in saved["environment"]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_bench_pin(fp32_build):
    (r,) = bench([str(fp32_build / "onnx")], threads=1, runs=2, warmup=0, pin="0", input_shape=None, progress=False)
    assert r["environment"]["affinity"] == [0]
    with pytest.raises(UserError, match="not available"):
        bench([str(fp32_build / "onnx")], threads=1, runs=2, warmup=0, pin="4096", input_shape=None, progress=False)


def test_bench_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        bench([str(tmp_path / "nope")], threads=None, runs=2, warmup=0, pin=None, input_shape=None, progress=False)
    with pytest.raises(UserError, match="no manifest.json in"):
        bench([str(tmp_path)], threads=None, runs=2, warmup=0, pin=None, input_shape=None, progress=False)


def test_bench_artifact_without_manifest(fp32_build, tmp_path):
    alone = shutil.copy(artifact_in(fp32_build / "onnx"), tmp_path / "alone.onnx")
    with pytest.raises(UserError, match=r"has no manifest.json; pass --input-shape 1,3,H,W"):
        bench([alone], threads=None, runs=2, warmup=0, pin=None, input_shape=None, progress=False)
    (r,) = bench([alone], threads=None, runs=2, warmup=0, pin=None, input_shape=(1, 3, 32, 32), progress=False)
    assert r["manifest"] is None and r["input"] == {"shape": [1, 3, 32, 32], "dtype": "float32", "layout": None,
                                                    "source": "random normal, seed 0"}
    assert "default" in format_table([r]).splitlines()[1]  # threads: the runtime's own


@pytest.mark.parametrize("name", ["x.tflite", "x.onnx"])
def test_bench_corrupt_artifact(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError) as e:
        bench([str(path)], threads=None, runs=2, warmup=0, pin=None, input_shape=(1, 3, 32, 32), progress=False)
    assert "\n" not in str(e.value) and f"{name} is not a loadable" in str(e.value)
