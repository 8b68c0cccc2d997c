"""`edge sweep`: the plan and its bad input (one line, exit 2, before any work), the grid, a
failed cell that does not stop the others, and resumption (a rerun rebuilds and re-times nothing)."""
from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from edge.cli import main
from edge.sweep import Cell, build_key, fingerprint, load_plan

SVD = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):  # ONNX has no SVD: the onnx cell fails, the others go on
        return self.fc(torch.linalg.svdvals(x.reshape(-1, 8, 8)))


def factory():
    return Net()


def example_inputs():
    return (torch.randn(1, 64),)
'''


def write_plan(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "plan.toml"
    plan.write_text(textwrap.dedent(body))
    return plan


BASE = """
models = ["tiny"]
targets = ["onnx"]
precisions = ["fp32"]
out = "res"
[build]
weights = "random"
[bench]
runs = 5
warmup = 1
"""


def one_error(argv, capsys, code=2) -> str:
    got = main(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("edge: error:")]
    assert got == code, err
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("edit, words", [
    (("models = [\"tiny\"]", "models = [\"tiny\"]\nmodel_zoo = 1"), ("unknown key 'model_zoo'", "models")),
    (("weights = \"random\"", "weights = \"random\"\ncalibration = \"x\""), ("[build]", "unknown key 'calibration'", "calib")),
    (("runs = 5", "runs = 5\nrepeats = 3"), ("[bench]", "unknown key 'repeats'")),
    (("[\"tiny\"]", "[\"tiny\", \"mobilenetv9\"]"), ("unknown model 'mobilenetv9'", "edge models")),
    (("[\"onnx\"]", "[\"onnx\", \"coreml\"]"), ("unknown target 'coreml'", "tflite")),
    (("[\"fp32\"]", "[\"fp8\"]"), ("unknown precision 'fp8'", "int8")),
    (("models = [\"tiny\"]", ""), ("models is missing",)),
    (("runs = 5", "runs = 5\nthreads = [0]"), ("threads must be positive",)),
    (("runs = 5", "runs = 0"), ("runs must be",)),
    (("runs = 5", "runs = 5\nrounds = 0"), ("rounds must be",)),
    (("out = \"res\"", "out = \"res\"\n[[x"), ("not valid TOML",)),
    (("[\"tiny\"]", "[\"gone.py:factory\"]"), ("gone.py not found",)),
    (("weights = \"random\"", "weights = \"random\"\nio = \"int4\""), ("io",)),
    (("[\"tiny\"]", "[{name = \"tiny\", calibrate = 1}]"), ("models[0] (tiny)", "unknown key 'calibrate'")),
    (("[\"tiny\"]", "[{weights = \"random\"}]"), ("models[0] needs a name",)),
    (("[\"tiny\"]", "[3]"), ("models must be a non-empty list",)),
])
def test_bad_plans_get_one_line_and_exit_2_before_any_work(tmp_path, capsys, edit, words):
    plan = write_plan(tmp_path, BASE.replace(*edit))
    line = one_error(["sweep", str(plan)], capsys)
    for w in words:
        assert w in line, line
    assert not (tmp_path / "res").exists()


def test_a_missing_plan_file_and_a_plan_without_out(tmp_path, capsys):
    assert "no such plan file" in one_error(["sweep", str(tmp_path / "nope.toml")], capsys)
    plan = write_plan(tmp_path, BASE.replace('out = "res"', ""))
    assert "--out" in one_error(["sweep", str(plan)], capsys)


def test_unreachable_devices_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    plan = write_plan(tmp_path, BASE.replace("[build]", 'devices = ["host", "ssh://nobody@127.0.0.1:1"]\n[build]'))
    line = one_error(["sweep", str(plan)], capsys)
    assert "cannot reach ssh://nobody@127.0.0.1:1" in line
    monkeypatch.setenv("EDGE_PI_EMU_ROOT", str(tmp_path / "no-root"))
    plan = write_plan(tmp_path, BASE.replace("[build]", 'devices = ["pi-emu"]\n[build]'))
    assert "edge device setup pi-emu" in one_error(["sweep", str(plan)], capsys)
    assert not (tmp_path / "res").exists()


def test_paths_in_a_plan_are_relative_to_it(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "m.py").write_text(SVD)
    plan = load_plan(write_plan(tmp_path / "p", BASE.replace('["tiny"]', '["../m.py:factory"]').replace(
        'weights = "random"', 'weights = "random"\ncalib = "../data"')))
    assert plan.models == (str(tmp_path / "p" / "../m.py:factory"),)
    assert Path(plan.build["calib"]).resolve() == tmp_path / "data"
    assert Path(plan.out).resolve() == tmp_path / "p" / "res"


def test_a_model_can_have_its_own_build_options(tmp_path):
    plan = load_plan(write_plan(tmp_path, BASE.replace('["tiny"]', '["tiny", {name = "mobilenetv2", eval = "d"}]')))
    assert plan.models == ("tiny", "mobilenetv2")
    assert plan.model_build == {"mobilenetv2": {"eval": str(tmp_path / "d")}}
    assert build_key(plan, Cell("tiny", "fp32", "onnx")) != build_key(plan, Cell("mobilenetv2", "fp32", "onnx"))


def test_keys_follow_the_data_the_model_file_and_the_settings(tmp_path, monkeypatch):
    data = tmp_path / "calib"
    data.mkdir()
    (data / "a.npy").write_bytes(b"1234")
    (tmp_path / "m.py").write_text(SVD)
    plan = load_plan(write_plan(tmp_path, BASE.replace('["tiny"]', '["m.py:factory"]').replace(
        'weights = "random"', 'weights = "random"\ncalib = "calib"\neval = "calib"')))
    cell = Cell(plan.models[0], "int8", "onnx")
    key, f = build_key(plan, cell), fingerprint(str(data))
    assert build_key(plan, cell) == key  # stable
    (data / "a.npy").write_bytes(b"12345")
    assert fingerprint(str(data)) != f and build_key(plan, cell) != key
    key = build_key(plan, cell)
    (tmp_path / "m.py").write_text(SVD + "\n# edited\n")
    assert build_key(plan, cell) != key
    assert build_key(plan, Cell(plan.models[0], "int8", "tflite")) != build_key(plan, cell)
    key = build_key(plan, cell)  # edge's own code: a changed converter rebuilds, as a new version would
    from edge import sweep

    monkeypatch.setattr(sweep, "code_digest", lambda: "edited")
    assert build_key(plan, cell) != key


def test_a_sweep_builds_times_records_failures_and_resumes(tmp_path, capsys):
    (tmp_path / "svd.py").write_text(SVD)
    plan = write_plan(tmp_path, """
        models = ["tiny", "svd.py:factory"]
        targets = ["onnx", "torchscript-mobile"]
        precisions = ["fp32", "fp16"]
        out = "res"
        [build]
        weights = "random"
        [bench]
        threads = [1, 2]
        runs = 5
        warmup = 1
    """)
    assert main(["sweep", str(plan)]) == 1  # a failed cell: exit 1, the others done
    doc = json.loads((tmp_path / "res" / "sweep.json").read_text())
    cells = {(r["cell"], r["threads"]) for r in doc["rows"]}
    assert cells == {(f"{m}/fp32/{t}", n) for m in ("tiny", "svd") for t in ("onnx", "torchscript-mobile")
                     for n in (1, 2)} - {("svd/fp32/onnx", 1), ("svd/fp32/onnx", 2)}
    [failed] = doc["failed"]
    assert failed["cell"] == "svd/fp32/onnx" and "linalg_svdvals" in failed["reason"] and "\n" not in failed["reason"]
    assert {s["cell"] for s in doc["skipped"]} == {f"{m}/fp16/{t}" for m in ("tiny", "svd")
                                                  for t in ("onnx", "torchscript-mobile")}
    for r in doc["rows"]:
        assert (tmp_path / "res" / r["artifact"]).is_file()
        assert r["p50_ms"] > 0 and r["size_mb"] > 0 and r["parity_passed"] and r["load_average"]
        assert isinstance(r["under_load"], bool)
    capsys.readouterr()

    artifacts = sorted((tmp_path / "res" / "cells").rglob("*.onnx")) + sorted((tmp_path / "res" / "cells").rglob("*.ptl"))
    stamps = {p: p.stat().st_mtime_ns for p in artifacts + sorted((tmp_path / "res").rglob("bench-*.json"))}
    t0 = time.perf_counter()
    assert main(["sweep", str(plan)]) == 1  # the failed cell is tried again and fails again
    rerun = time.perf_counter() - t0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a finished cell was built or timed again"
    doc2 = json.loads((tmp_path / "res" / "sweep.json").read_text())
    assert doc2["rows"] == doc["rows"] and len(doc2["failed"]) == 1
    assert rerun < 60

    plan.write_text(plan.read_text().replace("runs = 5", "runs = 6"))  # new bench settings: re-timed, not rebuilt
    assert main(["sweep", str(plan)]) == 1
    assert all(p.stat().st_mtime_ns == stamps[p] for p in artifacts)
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps if p.name.startswith("bench-"))


def test_retime_times_again_without_rebuilding_and_jobs_build_in_parallel(tmp_path, capsys):
    plan = write_plan(tmp_path, BASE.replace('targets = ["onnx"]', 'targets = ["onnx", "torchscript-mobile"]')
                      .replace('precisions = ["fp32"]', 'precisions = ["fp32", "int8"]'))
    assert main(["sweep", str(plan), "--jobs", "2", "-q"]) == 0  # four builds, two worker processes
    doc = json.loads((tmp_path / "res" / "sweep.json").read_text())
    assert doc["executor"] == {"kind": "local", "jobs": 2}
    assert {r["cell"] for r in doc["rows"]} == {f"tiny/{p}/{t}" for p in ("fp32", "int8")
                                                for t in ("onnx", "torchscript-mobile")}
    assert all(r["parity_passed"] for r in doc["rows"])
    stamps = lambda pattern: {p: p.stat().st_mtime_ns for p in (tmp_path / "res" / "cells").rglob(pattern)}
    built, timed = stamps("sweep-cell.json"), stamps("bench-*.json")
    assert len(built) == len(timed) == 4
    assert main(["sweep", str(plan), "--retime", "-q"]) == 0
    assert stamps("sweep-cell.json") == built
    assert all(t != timed[p] for p, t in stamps("bench-*.json").items())
    capsys.readouterr()
    assert "--jobs 0" in one_error(["sweep", str(plan), "--jobs", "0"], capsys)
    assert "--jobs" in one_error(["sweep", str(plan), "--jobs", "2", "--ray", "auto"], capsys)


def test_rounds_time_every_artifact_once_per_round(tmp_path):
    plan = write_plan(tmp_path, BASE.replace("runs = 5", "runs = 5\nrounds = 3"))
    assert main(["sweep", str(plan), "-q"]) == 0
    [row] = json.loads((tmp_path / "res" / "sweep.json").read_text())["rows"]
    assert row["rounds"] == 3 and len(row["p50_rounds_ms"]) == 3
    assert row["p50_ms"] == sorted(row["p50_rounds_ms"])[1]  # the median of the rounds
    [bench] = (tmp_path / "res" / "cells").rglob("bench-host-1t.json")
    assert len(json.loads(bench.read_text())["results"]) == 3


def test_report_of_a_sweep(tmp_path, capsys):
    plan = write_plan(tmp_path, BASE.replace('targets = ["onnx"]', 'targets = ["onnx", "torchscript-mobile"]'))
    assert main(["sweep", str(plan)]) == 0
    assert main(["report", str(tmp_path / "res")]) == 0
    html = (tmp_path / "res" / "report.html").read_text()
    assert "<svg" in html and "tiny" in html
    assert main(["report", str(tmp_path / "res"), "--recommend", "--max-latency-ms", "1000"]) == 0
    assert "ship: tiny" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "res"), "--recommend", "--max-size-mb", "0.000001"]) == 1
    assert "max-size-mb" in capsys.readouterr().out


def test_report_of_a_folder_without_a_sweep(tmp_path, capsys):
    assert "edge sweep" in one_error(["report", str(tmp_path)], capsys)


@pytest.mark.pi_emu
def test_a_sweep_on_the_emulated_pi_checks_outputs_once(tmp_path):
    """pi-emu in a plan: one run at the first thread count, the output checked against the host,
    no latency reported; a target the root has no runtime for is skipped with the reason."""
    from edge.device import piemu

    piemu.setup()
    plan = write_plan(tmp_path, BASE.replace('targets = ["onnx"]', 'targets = ["onnx", "torchscript-mobile"]').replace(
        "[build]", 'devices = ["host", "pi-emu"]\n[build]').replace("runs = 5", "runs = 5\nthreads = [1, 2]"))
    assert main(["sweep", str(plan)]) == 0
    doc = json.loads((tmp_path / "res" / "sweep.json").read_text())
    [emu] = [r for r in doc["rows"] if r["device"] == "pi-emu"]
    assert emu["cell"] == "tiny/fp32/onnx" and emu["threads"] == 1 and emu["emulated"] and emu["p50_ms"] is None
    assert emu["device_parity"]["passed"] and emu["device_parity"]["min_cosine"] > 0.999
    assert len([r for r in doc["rows"] if r["device"] == "host"]) == 4
    [skip] = [s for s in doc["skipped"] if s.get("device") == "pi-emu"]
    assert skip["cell"] == "tiny/fp32/torchscript-mobile" and "torch" in skip["reason"]


def test_ray_builds_get_the_threads_a_local_build_would(monkeypatch):
    """Ray sets OMP_NUM_THREADS to a task's CPUs (1); int8 calibration sums depend on torch's thread
    count, so a Ray build undoes it (Lite0's .pte differed from the local build before)."""
    import os

    import torch

    from edge import sweep_ray

    seen = {}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sweep_ray, "build_task", lambda plan, cell, key: seen.update(
        threads=torch.get_num_threads(), omp=os.environ.get("OMP_NUM_THREADS")) or {"files": b""})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert sweep_ray.build_with_local_threads(None, None, "k") == {"files": b""}
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": len(os.sched_getaffinity(0)), "omp": None}
