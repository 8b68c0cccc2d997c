"""`edge sweep --ray` against a real two-node Ray cluster on 127.0.0.1, inside a network and PID
namespace this test creates (tests/ray_cluster.py): the same cells, artifacts and figures as a
local run, and a node killed mid-sweep loses no finished cell."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.cli import main

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
                       reason="the Ray cluster runs in a network namespace of its own: needs root, unshare and ip"),
    pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None,
                       reason="ray is not installed (pip install 'edge[ray]'; make test installs it)"),
]

PLAN = """
models = ["tiny"]
targets = ["onnx", "torchscript-mobile"]
precisions = ["fp32", "int8"]
[build]
weights = "random"
[bench]
threads = [1]
runs = 5
warmup = 1
"""


def cluster(tmp_path: Path, plan: Path, *extra: str) -> dict:
    script = Path(__file__).with_name("ray_cluster.py")
    proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable, str(script),
                           str(tmp_path), str(plan), *extra], capture_output=True, text=True, timeout=1500,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def manifests(out: Path) -> dict[str, dict]:
    return {p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.glob("cells/*/*/*/manifest.json")}


@pytest.mark.slow  # a cluster start and two sweeps: about 1.5 minutes on 2 cores
def test_a_ray_sweep_gives_the_local_sweeps_cells_artifacts_and_figures(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(textwrap.dedent(PLAN))
    assert main(["sweep", str(plan), "--out", str(tmp_path / "local"), "-q"]) == 0
    summary = cluster(tmp_path, plan)
    [run] = summary["runs"]
    assert run["code"] == 0, run["stderr"]
    local = json.loads((tmp_path / "local" / "sweep.json").read_text())
    remote = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert remote["executor"]["kind"] == "ray" and remote["executor"]["nodes"] == 2
    key = lambda r: (r["cell"], r["device"], r["threads"])  # noqa: E731
    figures = ("top1", "drop_pp", "agreement", "parity_passed", "artifact")
    assert {key(r): {f: r[f] for f in figures} for r in remote["rows"]} == \
        {key(r): {f: r[f] for f in figures} for r in local["rows"]}
    a, b = manifests(tmp_path / "local"), manifests(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 4
    # ONNX conversion is deterministic: the same bytes. A .ptl is not (TorchScript's archive
    # differs from one process to the next), so only its figures are compared.
    for cell in ("cells/tiny/fp32/onnx", "cells/tiny/int8/onnx"):
        assert a[cell]["sha256"] == b[cell]["sha256"], cell
    for cell in a:
        assert a[cell]["parity"]["top1_agreement"] == b[cell]["parity"]["top1_agreement"], cell


@pytest.mark.slow
def test_a_node_killed_mid_sweep_loses_no_finished_cell(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(textwrap.dedent(PLAN))
    summary = cluster(tmp_path, plan, "--kill-second-node")
    assert summary["killed"], "the second node's raylet was not found"
    first, last = summary["runs"]
    assert last["code"] == 0, (first["stderr"], last["stderr"])
    done_before = summary["finished_before_kill"]
    assert done_before, "no cell had finished when the node was killed"
    for cell, mtime in done_before.items():  # finished cells were neither lost nor rebuilt
        assert summary["stamps_after"][cell] == mtime, cell
    doc = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert len(doc["rows"]) == 4 and not doc["failed"]


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:1", ("no Ray head answers there", "ray start --head")),
    ("nohost", ("HOST:PORT",)),
])
def test_a_cluster_that_is_not_there_is_one_line_at_once(tmp_path, capsys, address, words):
    plan = tmp_path / "plan.toml"
    plan.write_text(textwrap.dedent(PLAN))
    assert main(["sweep", str(plan), "--out", str(tmp_path / "out"), "--ray", address]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edge: error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), errors
    assert not (tmp_path / "out").exists()
