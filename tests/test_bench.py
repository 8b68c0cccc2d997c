"""edge bench and the on-device runner: exact statistics, the runner's JSON contract in each
runtime (its output checked against edge's own runners), bench() over a build folder in fresh
processes, one-line errors for bad input, and a runner that imports only stdlib and numpy."""
from __future__ import annotations

import ast
import json
import os
import re
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

import multi_io

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
LATENCY_KEYS = {"mean", "std", "min", "p50", "p90", "p99"}
CONTRACT = {"schema": str, "artifact": str, "path": str, "format": str, "runtime": dict, "size_bytes": int,
            "load_ms": float, "first_inference_ms": float, "warmup": int, "runs": int, "threads": int,
            "latency_ms": dict, "peak_rss_bytes": int, "input": dict, "output": dict, "environment": dict}
ENVIRONMENT_KEYS = {"cpu_model", "cores", "governor", "machine", "os", "python", "numpy", "runtimes"}
FORMATS = {"onnx": "onnx", "tflite": "tflite", "torchscript-mobile": "ptl", "executorch": "pte"}


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
    return out / "tflite"


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
    for option in ("--input inputs.npz", "--image", "--backend", "labels"):  # what the device person can do
        assert option in readme, option


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
                                              ("fp32", "torchscript-mobile"), ("fp32", "executorch"),
                                              ("int8", "tflite")])
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
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected["output"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the runner's errors

def test_runner_errors(fp32_build, device, tmp_path):
    onnx = artifact_in(fp32_build / "onnx")
    alone = Path(shutil.copy(onnx, tmp_path / "alone.onnx"))
    ptl = Path(shutil.copy(artifact_in(fp32_build / "torchscript-mobile"), tmp_path / "alone.ptl"))
    one_error(run_runner(device, tmp_path / "nope.onnx"), 2, "no such file")
    one_error(run_runner(device, tmp_path / "notes.txt"), 2, "unknown artifact type")
    one_error(run_runner(device, ptl), 2, "alone.ptl has no manifest.json", "--input-shape")
    pte = Path(shutil.copy(artifact_in(fp32_build / "executorch"), tmp_path / "alone.pte"))
    one_error(run_runner(device, pte), 2, "alone.pte has no manifest.json", "--input-shape")
    (tmp_path / "bad.pte").write_bytes(b"not a program")
    one_error(run_runner(device, tmp_path / "bad.pte", "--input-shape", "1,3,32,32"), 2, "bad.pte is not a loadable ExecuTorch program")
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


def test_bench_profile(fp32_build, capsys):
    """--profile: onnxruntime's per-node kernel times over as many runs again, by op type, block
    and node (with the PyTorch module the exporter's name gives), and how their sum compares with
    the unprofiled p50; LiteRT's profiler for TFLite and ExecuTorch's ETDump likewise."""
    from edge.cli import main

    onnx, tflite = bench([str(fp32_build / "onnx"), str(fp32_build / "tflite")], threads=1, runs=5, warmup=1,
                         progress=False, profile=True)
    p = onnx["profile"]
    assert p["available"] and p["runs"] == 5 and p["p50_ms"] == onnx["latency_ms"]["p50"]
    ops = {o["op"]: o for o in p["by_op_type"]}
    assert "Conv" in ops and all(o["ms"] > 0 and o["nodes"] >= 1 for o in ops.values())
    assert abs(sum(o["share"] for o in ops.values()) - 1) < 1e-3
    assert p["sum_ms"] > 0 and p["sum_vs_p50"] == round(p["sum_ms"] / p["p50_interleaved_ms"], 3)
    assert any(n["module"] for n in p["by_node"]) and p["by_block"]
    # TFLite: LiteRT's profiler, XNNPACK's own operators inside the delegate, each run's Invoke as its time
    p = tflite["profile"]
    assert p["available"] and p["runs"] == 5 and "LiteRT" in p["source"], p
    ops = {o["op"]: o for o in p["by_op_type"]}
    assert any(op.startswith("Convolution") for op in ops) and "Invoke" not in ops, ops
    assert all(n["node"].startswith("XNNPACK #") for n in p["by_node"]), p["by_node"]
    assert 0 < p["sum_ms"] <= p["run_ms"] * 1.001 and p["sum_vs_p50"] == round(p["sum_ms"] / p["p50_interleaved_ms"], 3)
    # ExecuTorch: ETDump, with XNNPACK's own operators inside the delegate (no module scopes in their names)
    (pte,) = bench([str(fp32_build / "executorch")], threads=1, runs=5, warmup=1, progress=False, profile=True)
    p = pte["profile"]
    assert p["available"] and p["runs"] == 5 and "ETDump" in p["source"], p
    ops = {o["op"]: o for o in p["by_op_type"]}
    assert any(op.startswith("Convolution") for op in ops) and "DELEGATE_CALL" not in ops, ops
    assert "Method::execute" not in ops and not any(re.search(r" #\d+$", op) for op in ops), ops
    assert 0 < p["sum_ms"] <= p["run_ms"] * 1.001 and p["sum_vs_p50"] == round(p["sum_ms"] / p["p50_interleaved_ms"], 3)
    assert "profile" not in bench([str(fp32_build / "onnx")], threads=1, runs=2, warmup=0, progress=False)[0]
    assert main(["bench", str(fp32_build / "onnx"), "--threads", "1", "--runs", "3", "--profile", "-q"]) == 0
    out = capsys.readouterr().out
    assert "operators sum to" in out and "op type" in out and "PyTorch module" in out


def test_tflite_profile_outside_the_delegate(tmp_path):
    """An op XNNPACK does not take (CUMSUM) runs on the interpreter's kernel: the profile names it
    as that node beside XNNPACK's operators, and a tflite-runtime-style interpreter without
    LiteRT says why there is no profile."""
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 64, 64], tf.float32, name="x")])
    def f(x):
        return tf.math.cumsum(x * 2.0 + 1.0, axis=1)

    path = tmp_path / "mixed.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert())
    (r,) = bench([str(path)], threads=1, runs=3, warmup=1, progress=False, profile=True)
    p = r["profile"]
    assert p["available"], p
    nodes = {n["node"]: n["op"] for n in p["by_node"]}
    assert nodes.get("CUMSUM #2") == "CUMSUM" and "Multiply (ND)" in nodes.values(), nodes
    backend = runner.TFLiteBackend(1, None)
    backend.load(path)
    backend.name = "tflite-runtime"
    assert backend.profile({0: np.zeros((1, 64, 64), np.float32)}, 2) == {"available": False,
                                                                         "why": runner.NO_PROFILER["tflite"]}


def test_profile_module_names():
    assert runner._module("/features/features.0/features.0.0/Conv_token_1") == "features.0.0"
    assert runner._module("/_blocks/_blocks.1/_act0/Clip_output_0_nchwc") == "_blocks.1._act0"
    assert runner._module("/_fc/Gemm") == "_fc" and runner._module("Conv_3") is None
    assert runner._block("/features/features.0/features.0.0/Conv") == "features.0" and runner._block("/_fc/Gemm") == "_fc"


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
    """An ONNX/TFLite file alone runs with the shapes it declares; a .ptl declares none, so it needs
    input_shape. The table's precision comes from the artifact's tensor types."""
    alone = shutil.copy(artifact_in(fp32_build / "onnx"), tmp_path / "alone.onnx")
    (r,) = bench([alone], threads=None, runs=2, warmup=0, pin=None, input_shape=None, progress=False)
    assert r["manifest"] is None and r["input"] == {"shape": [1, 3, 32, 32], "dtype": "float32", "layout": None,
                                                    "source": "random normal, seed 0"}
    row = format_table([r]).splitlines()[1]
    assert "default" in row and " float " in row  # threads: the runtime's own; fp32 tensors only
    ptl = shutil.copy(artifact_in(fp32_build / "torchscript-mobile"), tmp_path / "alone.ptl")
    with pytest.raises(UserError, match=r"alone.ptl has no manifest.json and a .ptl file declares no input shapes; "
                                        r"pass --input-shape"):
        bench([ptl], threads=None, runs=2, warmup=0, pin=None, input_shape=None, progress=False)
    (r,) = bench([ptl], threads=None, runs=2, warmup=0, pin=None, input_shape=(1, 3, 32, 32), progress=False)
    assert r["input"]["shape"] == [1, 3, 32, 32] and r["precision"] is None and " - " in format_table([r])


@pytest.mark.parametrize("name", ["x.tflite", "x.onnx"])
def test_bench_corrupt_artifact(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError) as e:
        bench([str(path)], threads=None, runs=2, warmup=0, pin=None, input_shape=(1, 3, 32, 32), progress=False)
    assert "\n" not in str(e.value) and f"{name} is not a loadable" in str(e.value)


# ---------------------------------------------------------------- several named inputs and outputs (schema 2)

@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> multi_io.Builds:
    """Artifacts with several inputs and outputs made without edge's pipeline (tests/multi_io.py)."""
    return multi_io.Builds(tmp_path_factory.mktemp("multi-io"))


def run_saving(runner_path: Path, artifact: Path, x: dict, tmp_path: Path, *args) -> tuple[dict, dict]:
    """Run the runner on `x` (.npz by input name); returns its JSON and its saved outputs by name."""
    np.savez(tmp_path / "x.npz", **x)
    proc = run_runner(runner_path, artifact, "--runs", 2, "--warmup", 0, "--threads", 1, "--input",
                      tmp_path / "x.npz", "--save-output", tmp_path / "y.npz", *args)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "y.npz") as y:
        return json.loads(proc.stdout), dict(y)


@pytest.mark.parametrize("kind", ["onnx", "ptl", "tflite-fp32", "tflite-int8"])
def test_runner_several_inputs_and_outputs(kind, multi, device, tmp_path):
    """Inputs bound by name (the ONNX manifest lists them in another order than the graph; TFLite
    orders its outputs feat, logits), NCHW data transposed for TFLite and quantized for its int8
    image, outputs dequantized and transposed back: the runner's outputs are the runtime's own on
    the same data, exactly (fp32) or within one quantization step (int8)."""
    artifact = multi[kind]
    x = multi_io.inputs_for(artifact)
    r, y = run_saving(device, artifact, x, tmp_path)
    manifest = json.loads((artifact.parent / "manifest.json").read_text())
    assert [i["name"] for i in r["inputs"]] == [i["name"] for i in manifest["inputs"]]
    assert [o["name"] for o in r["outputs"]] == [o["name"] for o in manifest["outputs"]]
    first_in, first_out = manifest["inputs"][0], manifest["outputs"][0]
    assert r["input"] == {"shape": first_in["shape"], "dtype": first_in["dtype"], "layout": first_in["layout"],
                          "source": "x.npz"}
    assert r["output"] == {"shape": first_out["shape"], "dtype": first_out["dtype"]}
    assert r["precision"] is None  # the manifest says it
    expected = multi_io.REFERENCES[kind](artifact, x)
    steps = multi_io.output_steps(artifact.parent)
    assert set(y) == set(expected) == {"logits", "feat"} and y["feat"].shape == (1, 4, 12, 16)
    for name in expected:
        assert y[name].dtype == np.float32
        if steps[name]:
            np.testing.assert_allclose(y[name], expected[name], rtol=0, atol=steps[name] * 1.001)
        else:
            np.testing.assert_array_equal(y[name], expected[name])
    if kind in ("onnx", "ptl", "tflite-fp32"):  # and the framework the artifact came from agrees
        framework = multi_io.torch_outputs(x) if kind != "tflite-fp32" else np.load(artifact.parent / "tf_outputs.npz")
        for name in expected:
            np.testing.assert_allclose(y[name], framework[name], rtol=1e-5, atol=1e-5)


def test_runner_makes_data_per_source(multi, device, tmp_path):
    """Without --input: tokens below vocab_size, an all-ones mask, a uniform range, random normal
    for an image; integer inputs are cast, never quantized."""
    r = json.loads(run_runner(device, multi["onnx"], "--runs", 1, "--warmup", 0).stdout)
    assert [i["source"] for i in r["inputs"]] == ["ones (mask)", "random tokens in [0, 50), seed 1",
                                                 "random normal, seed 2"]
    assert [i["dtype"] for i in r["inputs"]] == ["int64", "int64", "float32"]
    t = runner.Tensor
    ids = runner.make_data(t("ids", (1, 4000), "int64", model_shape=(1, 4000),
                             source={"kind": "tokens", "vocab_size": 50}), 0)[0]
    assert ids.dtype == np.int64 and ids.min() == 0 and ids.max() == 49
    mask = runner.make_data(t("mask", (2, 5), "int64", model_shape=(2, 5), source={"kind": "mask"}), 0)[0]
    assert mask.dtype == np.int64 and (mask == 1).all()
    u = runner.make_data(t("u", (1, 4000), "float32", model_shape=(1, 4000),
                           source={"kind": "range", "low": -2.0, "high": 3.0}), 0)[0]
    assert u.dtype == np.float32 and -2.0 <= u.min() < -1.9 and 2.9 < u.max() < 3.0
    image = t("image", (1, 3, 4, 4), "float32", model_shape=(1, 3, 4, 4), source={"kind": "image"})
    x, source = runner.make_data(image, 0)
    np.testing.assert_array_equal(x, np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32))
    assert source == "random normal, seed 0"
    # int8 TFLite: the tokens stay int64 while the float image is quantized to int8
    r = json.loads(run_runner(device, multi["tflite-int8"], "--runs", 1, "--warmup", 0).stdout)
    assert [(i["name"], i["dtype"]) for i in r["inputs"]] == [("image", "int8"), ("ids", "int64")]
    assert r["inputs"][0]["source"] == "uniform [-2.0, 2.0), seed 0"


def test_runner_input_file_errors(multi, device, tmp_path):
    """--input .npz must hold exactly the manifest's input names, in the model's shape and kind of dtype."""
    artifact = multi["onnx"]
    x = multi_io.inputs_for(artifact)

    def with_input(name: str, **arrays) -> subprocess.CompletedProcess:
        np.savez(tmp_path / name, **arrays)
        return run_runner(device, artifact, "--runs", 1, "--input", tmp_path / name)

    one_error(with_input("missing.npz", image=x["image"], ids=x["ids"]), 2, "lacks mask", "mask, ids, image")
    one_error(with_input("extra.npz", **x, pixels=x["image"]), 2, "holds pixels, which the artifact does not take")
    one_error(with_input("shape.npz", **(x | {"image": x["image"][:, :, :8]})), 2, "[image] holds float32 1,3,8,16",
              "expected float32 1,3,12,16 (NCHW)")
    one_error(with_input("dtype.npz", **(x | {"ids": x["ids"].astype(np.float32)})), 2, "[ids] holds float32",
              "expected int64 1,8")
    np.save(tmp_path / "one.npy", x["image"])
    one_error(run_runner(device, artifact, "--input", tmp_path / "one.npy"), 2, "holds one array",
              "takes 3 inputs", ".npz")


def test_runner_manifest_binding_errors(multi, device, tmp_path):
    """A manifest that names a tensor the artifact lacks, or leaves one of its inputs out: one line, exit 2."""
    folder = tmp_path / "onnx"
    shutil.copytree(multi["onnx"].parent, folder)
    m = json.loads((folder / "manifest.json").read_text())
    renamed = json.loads(json.dumps(m))
    renamed["inputs"][1]["tensor"] = "input_ids"
    (folder / "manifest.json").write_text(json.dumps(renamed))
    one_error(run_runner(device, folder / "model.onnx"), 2, "'ids' is tensor 'input_ids'", "image, ids, mask")
    (folder / "manifest.json").write_text(json.dumps(m | {"inputs": m["inputs"][1:]}))
    one_error(run_runner(device, folder / "model.onnx"), 2, "also takes input mask")
    retyped = json.loads(json.dumps(m))
    retyped["inputs"][1]["dtype"] = "int32"
    (folder / "manifest.json").write_text(json.dumps(retyped))
    one_error(run_runner(device, folder / "model.onnx"), 2, "says input 'ids' is int32", "takes int64")


def test_manifest_layouts():
    """The transpose from model_layout to layout ([model_layout.index(c) for c in layout]), the
    model shape it implies, and manifests whose layouts or shapes cannot be right."""
    def entry(**kw):
        return {"name": "x", "dtype": "float32", "tensor": "x"} | kw

    def tensors(*inputs):
        return runner.manifest_tensors({"inputs": list(inputs), "outputs": []})[0]

    (image, seq) = tensors(entry(name="image", shape=[1, 12, 16, 3], layout="NHWC", model_layout="NCHW"),
                           entry(name="seq", shape=[1, 7, 5], layout="NLC", model_layout="NCL", model_shape=[1, 5, 7]))
    assert image.perm() == [0, 2, 3, 1] and image.model_shape == (1, 3, 12, 16) and seq.perm() == [0, 2, 1]
    y = np.arange(1 * 12 * 16 * 3).reshape(1, 12, 16, 3)
    np.testing.assert_array_equal(runner.to_model(y, image), y.transpose(0, 3, 1, 2))
    same, = tensors(entry(shape=[1, 8], layout=None, model_layout=None))
    assert same.perm() is None and same.model_shape == (1, 8)
    bad = [(entry(shape=[1, 12, 16, 3], layout="NHWC", model_layout="NCHW", model_shape=[1, 3, 16, 12]),
            "is not shape 1,12,16,3 (NHWC) transposed"),
           (entry(shape=[1, 12, 16, 3], layout="NHWC", model_layout="NCLW"), "do not hold the same dims"),
           (entry(shape=[1, 12, 16], layout="NHWC", model_layout="NCHW"), "does not name each of its 3 dims"),
           (entry(shape="1,8"), "has no shape")]
    for e, words in bad:
        with pytest.raises(runner.BadInput, match=re.escape(words)):
            tensors(e)
    with pytest.raises(runner.BadInput, match="names input 'x' twice"):
        tensors(entry(shape=[1]), entry(shape=[2]))
    with pytest.raises(runner.BadInput, match="output 'x' has 3 dims"):
        runner.to_model(np.zeros((1, 2, 3)), runner.Tensor("x", (1, 2, 3, 4), layout="NHWC", model_layout="NCHW"))


def test_runner_save_output_npz_and_npy(multi, fp32_build, device, tmp_path):
    """Several outputs go to an .npz by name, written to the path given; one output stays .npy."""
    run_runner(device, multi["ptl"], "--runs", 1, "--save-output", tmp_path / "out.npy")
    with np.load(tmp_path / "out.npy") as y:
        assert sorted(y.files) == ["feat", "logits"]
    run_runner(device, artifact_in(fp32_build / "onnx"), "--runs", 1, "--save-output", tmp_path / "one.npy")
    assert np.load(tmp_path / "one.npy").shape == (1, 10)


# ---------------------------------------------------------------- artifacts without a manifest

def test_runner_foreign_artifacts_read_their_own_inputs(fp32_build, multi, device, tmp_path):
    """An artifact alone: its inputs and dtypes from the model, data in its own layout (NHWC for
    TFLite), integer inputs cast, and the precision from its tensor types."""
    tfl = Path(shutil.copy(artifact_in(fp32_build / "tflite"), tmp_path / "alone.tflite"))
    x = np.random.default_rng(2).standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_runner(device, tfl, "--runs", 1, "--input", tmp_path / "x.npy", "--save-output", tmp_path / "y.npy")
    r = json.loads(proc.stdout)
    assert r["input"]["shape"] == [1, 32, 32, 3] and r["input"]["layout"] is None and r["precision"] == "float"
    from edge.targets.tflite import TFLiteRunner  # without a manifest, edge's own runner too takes the file's layout

    (y,) = TFLiteRunner(tfl).run(x).values()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), y)
    one_error(run_runner(device, tfl, "--input-shape", "1,3,32,32"), 2, "does not fit", "1,32,32,3")
    several = Path(shutil.copy(multi["tflite-int8"], tmp_path / "several.tflite"))
    r = json.loads(run_runner(device, several, "--runs", 1).stdout)
    assert [(i["name"], i["dtype"], i["shape"]) for i in r["inputs"]] == [("image", "int8", [1, 12, 16, 3]),
                                                                          ("ids", "int64", [1, 8])]
    assert r["precision"] == "int8" and r["inputs"][1]["source"] == "ones (integer input without a source)"
    fp16 = Path(shutil.copy(multi["tflite-fp16"], tmp_path / "half.tflite"))
    assert json.loads(run_runner(device, fp16, "--runs", 1).stdout)["precision"] == "fp16"


def test_runner_foreign_onnx_precision_from_initializers(fp32_build, device, tmp_path):
    """A QDQ/integer-weight ONNX graph takes and returns float; its int8 weights say int8 (with the
    onnx package, which the host has)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(artifact_in(fp32_build / "onnx")), str(tmp_path / "w8.onnx"), weight_type=QuantType.QInt8)
    r = json.loads(run_runner(device, tmp_path / "w8.onnx", "--runs", 1).stdout)
    assert r["input"]["dtype"] == "float32" and r["precision"] == "int8"


def dynamic_onnx(path: Path, nhwc: bool) -> Path:
    """A small conv net exported with dynamic batch, height and width (NHWC: it permutes inside)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x.permute(0, 3, 1, 2) if nhwc else x).mean(dim=(2, 3))

    torch.manual_seed(0)
    example = torch.zeros((1, 20, 24, 3) if nhwc else (1, 3, 20, 24))
    h, w = (1, 2) if nhwc else (2, 3)
    torch.onnx.export(Net().eval(), (example,), str(path), dynamo=False, input_names=["pixels"], output_names=["y"],
                      dynamic_axes={"pixels": {0: "batch", h: "height", w: "width"}})
    return path


@pytest.mark.parametrize("nhwc", [False, True])
def test_runner_dynamic_dims_hint(nhwc, device, tmp_path):
    """Dynamic dims need --input-shape; the hint shows the model's own layout with them marked."""
    path = dynamic_onnx(tmp_path / "dyn.onnx", nhwc)
    marked = "batch?,height?,width?,3" if nhwc else "batch?,3,height?,width?"
    one_error(run_runner(device, path), 2, "dyn.onnx has no manifest.json", f"pixels={marked}", "--input-shape")
    shape = "2,20,24,3" if nhwc else "2,3,20,24"
    proc = run_runner(device, path, "--runs", 1, "--input-shape", shape)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["input"]["shape"] == [int(d) for d in shape.split(",")] and r["output"]["shape"] == [2, 4]
    named = run_runner(device, path, "--runs", 1, "--input-shape", f"pixels={shape}")
    assert named.returncode == 0 and json.loads(named.stdout)["input"]["shape"] == r["input"]["shape"]
    one_error(run_runner(device, path, "--input-shape", f"image={shape}"), 2, "has no input 'image'")


def test_bench_table_precision_without_manifest(multi, tmp_path):
    several = shutil.copy(multi["tflite-int8"], tmp_path / "several.tflite")
    (r,) = bench([several], threads=1, runs=1, warmup=0, pin=None, input_shape=None, progress=False)
    assert r["precision"] == "int8" and format_table([r]).splitlines()[1].split()[3] == "int8"


# ---------------------------------------------------------------- backends from the target registry

def test_every_target_names_a_runner_backend():
    from edge.targets import TARGETS

    for target in TARGETS:
        assert runner.BACKENDS[target.runner_backend].suffix == target.suffix, target.name


def test_runner_backend_option(fp32_build, device, tmp_path):
    odd = Path(shutil.copy(artifact_in(fp32_build / "onnx"), tmp_path / "model.bin"))
    one_error(run_runner(device, odd), 2, "unknown artifact type", "--backend")
    proc = run_runner(device, odd, "--backend", "onnx", "--runs", 1)
    assert proc.returncode == 0 and json.loads(proc.stdout)["format"] == "onnx", proc.stderr
    one_error(run_runner(device, odd, "--backend", "tensorrt"), 2, "--backend", "invalid choice")


def test_bench_passes_the_targets_backend(fp32_build, tmp_path):
    """The runner is told the backend by the target registry, not by the file's suffix."""
    folder = shutil.copytree(fp32_build / "onnx", tmp_path / "onnx")
    m = json.loads((folder / "manifest.json").read_text())
    os.rename(folder / m["artifact"], folder / "tiny.model")
    (folder / "manifest.json").write_text(json.dumps(m | {"artifact": "tiny.model"}))
    (r,) = bench([str(folder)], threads=1, runs=1, warmup=0, pin=None, input_shape=None, progress=False)
    assert r["format"] == "onnx" and r["artifact"] == "tiny.model"


def test_bench_artifact_named_like_an_option(fp32_build, tmp_path, monkeypatch):
    """edge puts -- before the artifact, so -x.onnx is a file name, not an option."""
    shutil.copy(artifact_in(fp32_build / "onnx"), tmp_path / "-x.onnx")
    monkeypatch.chdir(tmp_path)
    (r,) = bench(["-x.onnx"], threads=1, runs=1, warmup=0, pin=None, input_shape=None, progress=False)
    assert r["artifact"] == "-x.onnx"


# ---------------------------------------------------------------- --image: what the person at the device sees

@pytest.mark.parametrize("photo", ["chelsea.jpg", "astronaut.jpg", "rocket.jpg"])
def test_runner_image_preprocessing_is_edges(photo):
    """The runner's own loader (PIL + numpy) gives edge.data.load_image's numbers bit for bit."""
    from edge.data import BUILTIN_CALIB_DIR, load_image
    from edge.models.spec import Preprocess

    pre = Preprocess(256, 224, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    image = runner.Tensor("input", (1, 3, 224, 224), "float32", model_shape=(1, 3, 224, 224),
                          source={"kind": "image", "resize": 256, "crop": 224, "mean": list(pre.mean),
                                  "std": list(pre.std), "color": "RGB"})
    ours = runner.load_photo(str(BUILTIN_CALIB_DIR / photo), image)
    theirs = load_image(BUILTIN_CALIB_DIR / photo, pre)[None]
    assert ours.dtype == theirs.dtype == np.float32 and ours.tobytes() == theirs.tobytes()


def test_runner_image_top5(fp32_build, device, tmp_path):
    """--image runs a photo through the manifest's preprocessing and prints the top-5 classes,
    named from the labels file beside the artifact (class indices without one)."""
    from edge.data import BUILTIN_CALIB_DIR, load_image
    from edge.models.spec import Preprocess
    from edge.targets import TARGETS

    folder = shutil.copytree(fp32_build / "onnx", tmp_path / "onnx")
    artifact, m = artifact_in(folder), json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(m | {"labels": None}))  # first without labels
    photo = BUILTIN_CALIB_DIR / "chelsea.jpg"
    p = m["preprocess"]
    x = load_image(photo, Preprocess(p["resize"], p["crop"], tuple(p["mean"]), tuple(p["std"])))[None]
    scores = TARGETS.get("onnx").load(artifact, m).run(x)["output"][0]
    best = [int(i) for i in np.argsort(-scores, kind="stable")[:5]]

    proc = run_runner(device, artifact, "--runs", 1, "--image", photo)
    r = json.loads(proc.stdout)
    assert r["input"]["source"] == "chelsea.jpg" and [t["index"] for t in r["top5"]] == best
    assert [t["label"] for t in r["top5"]] == [None] * 5 and f"class {best[0]} (index {best[0]})" in proc.stderr
    np.testing.assert_allclose([t["score"] for t in r["top5"]], scores[best], rtol=1e-5, atol=1e-6)

    names = [f"name-{i}" for i in range(10)]
    (folder / "labels.txt").write_text("\n".join(names) + "\n")
    (folder / "manifest.json").write_text(json.dumps(m | {"labels": "labels.txt"}))
    proc = run_runner(device, artifact, "--runs", 1, "--image", photo)
    r = json.loads(proc.stdout)
    assert [t["label"] for t in r["top5"]] == [names[i] for i in best]
    lines = proc.stderr.splitlines()
    top = lines.index("top-5 for chelsea.jpg:")
    assert [ln.split(".", 1)[1].split("(")[0].strip() for ln in lines[top + 1:top + 6]] == [names[i] for i in best]


def test_runner_image_errors(fp32_build, multi, device, tmp_path):
    onnx = artifact_in(fp32_build / "onnx")
    photo = Path(edge.__file__).parent / "assets" / "calib" / "chelsea.jpg"
    one_error(run_runner(device, multi["onnx"], "--image", photo), 2, "--image needs a manifest whose single input",
              "mask (source mask)")
    alone = shutil.copy(onnx, tmp_path / "alone.onnx")
    one_error(run_runner(device, alone, "--image", photo), 2, "--image needs the artifact's manifest.json")
    (tmp_path / "not.jpg").write_text("not an image")
    one_error(run_runner(device, onnx, "--image", tmp_path / "not.jpg"), 2, "not a readable image")
    one_error(run_runner(device, onnx, "--image", photo, "--input", tmp_path / "x.npy"), 2, "not allowed with")
