"""edge report: Pareto fronts against hand-computed ones and a brute-force definition, the
recommendation (choice, runner-up, ties, each "nothing meets" message), the HTML and Markdown
written atomically and self-contained, and sweep folders read back. Hand-made rows; no model is
built."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from edge import report
from edge.errors import UserError


def row(model="m", target="tflite", precision="int8", p50=10.0, size=5.0, *, top1=None, agreement=0.9, drop=None,
        device="host", threads=1, emulated=False, parity=True, under_load=False) -> dict:
    return {"cell": f"{model}/{precision}/{target}", "model": model, "target": target, "precision": precision,
            "stages": ["load", "quantize", "export", "check"], "artifact": f"cells/{model}/{precision}/{target}/a.bin",
            "size_mb": size, "device": device, "threads": threads, "p50_ms": p50,
            "p90_ms": None if p50 is None else p50 * 1.1, "emulated": emulated, "top1": top1,
            "fp32_top1": None if top1 is None else 80.0, "drop_pp": drop, "agreement": agreement,
            "parity_passed": parity, "budget": {"min_top1_agreement": 0.7}, "under_load": under_load,
            "load_average": [0.1, 0.1, 0.1]}


# ---------------------------------------------------------------- pareto_front

def test_pareto_front_hand_computed():
    points = [(10, 70), (5, 60), (5, 65), (20, 80), (15, 75), (12, 70), (8, 64), (25, 79)]
    # (5,60): same x as (5,65), lower y; (8,64) and (12,70), (25,79): worse in both or equal in one
    assert report.pareto_front(points) == [2, 0, 4, 3]


@pytest.mark.parametrize("points, front", [
    ([], []),
    ([(3.0, 50.0)], [0]),
    ([(3, 50), (1, 90), (3, 50), (1, 90)], [1, 3]),  # identical points are all on the front
    ([(2, 70), (2, 70), (1, 60)], [2, 0, 1]),
    ([(1, 50), (2, 50)], [0]),  # equal accuracy, slower: dominated
    ([(1, 50), (1, 40)], [0]),  # equal latency, less accurate: dominated
    ([(4, 10), (3, 20), (2, 30), (1, 40)], [3]),
])
def test_pareto_front_edges(points, front):
    assert report.pareto_front(points) == front


def test_pareto_front_matches_the_definition():
    def dominated(p, q):  # does q dominate p?
        return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])

    rng = random.Random(0)
    for _ in range(300):
        points = [(rng.randint(0, 5), rng.randint(0, 5)) for _ in range(rng.randint(1, 9))]
        expected = [i for i, p in enumerate(points) if not any(dominated(p, q) for q in points)]
        assert report.pareto_front(points) == sorted(expected, key=lambda i: (points[i][0], i)), points


# ---------------------------------------------------------------- recommend

@pytest.fixture
def host_rows() -> list[dict]:
    return [row("m", "tflite", "int8", 6.52, 5.27, agreement=0.944, drop=0.12, top1=80.1),
            row("m", "onnx", "int8", 6.90, 5.50, agreement=0.95, drop=0.30),
            row("m", "onnx", "fp32", 20.0, 20.0, agreement=1.0, drop=0.0),
            row("m", "onnx", "fp16", 8.0, 12.0, agreement=0.93, drop=0.2),  # tflite int8 is better at both
            row("m", "executorch", "int8", 1.0, 4.0, drop=0.1, parity=False),  # fastest, but failed parity
            # emulated: its timing says nothing about a Pi
            row("m", "tflite", "int8", 150.0, 5.27, device="pi-emu", threads=None, emulated=True, drop=0.12)]


def test_recommend_choice_and_runner_up(host_rows):
    rec = report.recommend(host_rows, "host", None, None, None)
    assert (rec.choice, rec.runner_up) == (host_rows[0], host_rows[1])
    assert rec.reason == ("m tflite int8: 6.52 ms p50 on host (1 thread), 5.27 MB, top-1 drop 0.12 pp, the fastest "
                          "of 4 artifacts that meet every constraint; runner-up onnx int8 at 6.90 ms.")


def test_recommend_constraints_pick_among_the_feasible(host_rows):
    rec = report.recommend(host_rows, "host", 25, 10, 0.2)  # onnx int8 drops too much, the rest are too big
    assert rec.choice is host_rows[0] and rec.runner_up is None
    assert "the only artifact that meets every constraint" in rec.reason
    assert report.recommend(host_rows, "host", None, None, 0.05).choice is host_rows[2]


@pytest.mark.parametrize("limits, reason", [
    ((2, None, None), "nothing meets --max-latency-ms 2: the fastest artifact on host is m tflite int8 at 6.52 ms"),
    ((None, 1, None), "nothing meets --max-size-mb 1: the smallest artifact on host is m tflite int8 at 5.27 MB"),
    ((None, None, -1), "nothing meets --max-drop -1: the smallest top-1 drop on host is m onnx fp32 at 0.00 pp"),
    ((2, 1, None), "nothing meets --max-latency-ms 2: the fastest artifact on host is m tflite int8 at 6.52 ms; "
                   "nothing meets --max-size-mb 1: the smallest artifact on host is m tflite int8 at 5.27 MB"),
    # each alone is met (latency by both int8, the drop by fp32), not together; both int8 miss one: the faster
    ((7, None, 0.05), "each constraint is met by some artifact on host, but none meets them all together; "
                      "the closest is m tflite int8, which misses --max-drop 0.05 (0.12 pp)"),
])
def test_recommend_nothing_meets(host_rows, limits, reason):
    rec = report.recommend(host_rows, "host", *limits)
    assert (rec.choice, rec.runner_up, rec.reason) == (None, None, reason)


def test_recommend_drop_without_labelled_data():
    rows = [row(p50=5.0), row(target="onnx", p50=6.0)]
    rec = report.recommend(rows, "host", None, None, 1.0)
    assert rec.choice is None
    assert rec.reason == "nothing meets --max-drop 1: no artifact has accuracy on labelled data; build with --eval"
    rows.append(row(target="pte", p50=7.0, drop=1.5))  # the one with a drop misses; the others cannot tell
    assert report.recommend(rows, "host", None, None, 1.0).reason == (
        "nothing meets --max-drop 1: the smallest top-1 drop on host is m pte int8 at 1.50 pp "
        "(2 more have no accuracy on labelled data; build with --eval)")
    rows.append(row(target="ptl", p50=8.0, size=50.0, drop=0.5))  # meets the drop alone, not the size
    # every row misses one constraint: the closest is the fastest of them
    assert report.recommend(rows, "host", None, 10, 1.0).reason.endswith(
        "the closest is m tflite int8, which misses --max-drop 1 (no accuracy on labelled data; build with --eval)")


def test_recommend_emulated_timings_are_not_latencies(host_rows):
    rec = report.recommend(host_rows, "pi-emu", 100, None, None)
    assert rec.choice is None and "real timing" in rec.reason
    assert report.recommend(host_rows, "pi-emu", None, 10, None).choice is host_rows[5]


@pytest.mark.parametrize("p50_b, top1_b, size_b, winner", [
    (10.1, 75.0, 5.0, "b"),  # within 2% of a: the more accurate wins
    (10.3, 75.0, 5.0, "a"),  # 3% slower: not a tie
    (10.1, 70.0, 4.0, "b"),  # within 2%, equal accuracy: the smaller wins
    (10.1, 70.0, 6.0, "a"),
])
def test_recommend_ties(p50_b, top1_b, size_b, winner):
    a = row(target="a", p50=10.0, size=5.0, top1=70.0, drop=0.5)
    b = row(target="b", p50=p50_b, size=size_b, top1=top1_b, drop=0.5)
    rec = report.recommend([a, b], "host", None, None, None)
    assert rec.choice["target"] == winner
    assert rec.runner_up["target"] == ("a" if winner == "b" else "b")


def test_recommend_threads(host_rows):
    four = row("m", "onnx", "int8", 4.0, 5.5, threads=4, drop=0.3)
    rows = [*host_rows, four]
    assert report.recommend(rows, "host", None, None, None, threads=4).choice is four
    assert report.recommend(rows, "host", None, None, None, threads=1).choice is host_rows[0]
    assert report.recommend(rows, "host", None, None, None).choice is four  # every thread count competes
    with pytest.raises(UserError, match="1 thread, 4 threads"):
        report.recommend(rows, "host", None, None, None, threads=8)


def test_recommend_unknown_device_lists_the_devices(host_rows):
    with pytest.raises(UserError, match="'pi'.*host, pi-emu"):
        report.recommend(host_rows, "pi", None, None, None)


@pytest.mark.parametrize("limits", [(0, None, None), (None, -3, None), (None, None, float("nan"))])
def test_recommend_rejects_bad_constraints(host_rows, limits):
    with pytest.raises(UserError, match="--max-"):
        report.recommend(host_rows, "host", *limits)


# ---------------------------------------------------------------- write

@pytest.fixture
def sweep_rows(host_rows) -> list[dict]:
    return [*host_rows, row("m", "onnx", "int8", 4.0, 5.5, threads=4, top1=79.0, drop=0.3, under_load=True),
            row("m", "tflite", "int8", 3.0, 5.27, threads=4, top1=78.0, drop=1.3)]


FAILED = [{"cell": "m/fp16/tflite", "reason": "converter said <script>alert(1)</script>"},
          {"cell": "m/int8/onnx", "reason": "a | b\n  c"}]


def _tables(page: str) -> list[str]:
    return re.findall(r"<table>.*?</table>", page, flags=re.S)


def test_write_html(tmp_path, sweep_rows):
    html_path, md_path = report.write(sweep_rows, FAILED, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.md"]  # no temp files
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>edge report</title>" in page
    # 3 groups (host 1 and 4 threads, pi-emu) x 2 plots, less pi-emu's latency plot (emulated: no points)
    assert page.count("<svg") == 5 and "No points for p50 latency" in page
    for forbidden in ('src="http', 'href="http', "<script", "<link", "@import", "url(http"):
        assert forbidden not in page, forbidden
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    results = _tables(page)[0]
    assert results.count("<tr>") == len({r["cell"] for r in sweep_rows}) + 1  # the header, then one per artifact
    # front points are labelled on the plots (their text is drawn as paths, with the text beside)
    host_1 = page[page.index("<h2>Fronts on host, 1 thread</h2>"):page.index("<h2>Fronts on host, 4 threads</h2>")]
    assert host_1.count("<!-- m tflite int8 -->") == 2 and "<!-- m onnx fp16 -->" not in host_1


def test_write_markdown(tmp_path, sweep_rows):
    _, md_path = report.write(sweep_rows, FAILED, tmp_path)
    md = md_path.read_text()
    results = md[md.index("## Results"):md.index("## Fronts")]
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in results.splitlines() if line.startswith("|")]
    header, body = lines[0], lines[2:]
    # one row per artifact (m/int8/tflite has three results: host 1 and 4 threads, pi-emu), its
    # timings in each timed group side by side, the emulated device's outputs in a column
    assert header == ["model", "target", "precision", "stages", "size MB", "p50 / p90 ms, host 1t",
                      "p50 / p90 ms, host 4t", "p50 vs fp32, host 1t", "top-1 %", "drop pp", "agreement", "parity",
                      "outputs on pi-emu (emulated)", "on a latency front", "under load"]
    assert len(body) == len({r["cell"] for r in sweep_rows}) == 5
    by_key = {(r[header.index("target")], r[header.index("precision")]): dict(zip(header, r)) for r in body}
    tfl, onnx = by_key[("tflite", "int8")], by_key[("onnx", "int8")]
    assert tfl["p50 / p90 ms, host 1t"] == "6.52 / 7.17" and tfl["p50 / p90 ms, host 4t"] == "3.00 / 3.30"
    assert tfl["on a latency front"] == "host 1t, host 4t" and tfl["under load"] == ""
    assert onnx["on a latency front"] == "host 4t"  # at 1 thread: no top-1 where another row has it
    assert onnx["under load"] == "host 4t"
    assert by_key[("onnx", "fp16")]["on a latency front"] == ""  # dominated by tflite int8
    assert by_key[("onnx", "fp16")]["p50 / p90 ms, host 4t"] == "-"
    assert by_key[("executorch", "int8")]["parity"] == "FAIL"
    # int8 over fp32 of the same model, target, device and threads: onnx 6.90 / 20.0 ms; no fp32 to
    # divide by for tflite, and fp32 itself has no ratio
    ratio = "p50 vs fp32, host 1t"
    assert onnx[ratio] == "0.35x" and by_key[("onnx", "fp16")][ratio] == "0.40x"
    assert tfl[ratio] == "-" and by_key[("onnx", "fp32")][ratio] == "-"
    # host at 4 threads: every row has top-1, so its fronts use top-1; tflite int8 is faster, onnx more accurate
    four = md[md.index("## Fronts on host, 4 threads"):md.index("## Fronts on pi-emu")]
    assert "Accuracy: top-1 on labelled data (%)." in four
    front = r"\| 1 +\| m tflite int8 +\| 3\.00 +\| 78\.00 +\|\n\| 2 +\| m onnx int8 +\| 4\.00 +\| 79\.00 +\|"
    assert re.search(front, four)
    one = md[md.index("## Fronts on host, 1 thread"):md.index("## Fronts on host, 4 threads")]
    # one row has top-1: the fronts use it, and the four rows without it stay off them (agreement
    # with fp32 is not comparable across models)
    assert "Accuracy: top-1 on labelled data (%). 4 artifacts without top-1 on labelled data (no --eval) not on " \
           "the fronts." in one
    assert "| m/fp16/tflite | converter said <script>alert(1)</script> |" in md
    assert re.search(r"^\| m/int8/onnx +\| a \\\| b c +\|$", md, flags=re.M)  # a raw pipe or newline would end the row


def test_write_is_repeatable(tmp_path, sweep_rows):
    first = report.write(sweep_rows, [], tmp_path / "a")[0].read_text()
    assert report.write(sweep_rows, [], tmp_path / "b")[0].read_text() == first


def test_write_failure_leaves_no_half_file(tmp_path, sweep_rows, monkeypatch):
    out = tmp_path / "out"
    report.write(sweep_rows[:1], [], out)
    before = {p.name: p.read_text() for p in out.iterdir()}

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", full_disk)
    with pytest.raises(UserError, match="No space left"):
        report.write(sweep_rows, FAILED, out)
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_write_into_a_file_is_a_user_error(tmp_path, sweep_rows):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="cannot write the report"):
        report.write(sweep_rows, [], tmp_path / "f")


# ---------------------------------------------------------------- load

def _sweep(folder: Path, rows: list[dict], failed: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True)
    doc = {"schema": 1, "plan": {"models": ["m"]}, "rows": rows, "failed": failed or []}
    (folder / "sweep.json").write_text(json.dumps(doc))
    return folder


def test_load(tmp_path, monkeypatch):
    a = _sweep(tmp_path / "work" / "a", [row(target="tflite"), row(target="onnx")], FAILED)
    b = _sweep(tmp_path / "elsewhere" / "b", [row(device="pi-emu", emulated=True)])
    monkeypatch.chdir(tmp_path / "work")
    rows, failed = report.load([Path("a"), b])
    assert [(r["target"], r["device"]) for r in rows] == [("tflite", "host"), ("onnx", "host"), ("tflite", "pi-emu")]
    assert failed == FAILED
    assert rows[0]["artifact"] == "a/cells/m/int8/tflite/a.bin"  # relative to the working folder
    assert rows[2]["artifact"] == str(b.resolve() / "cells/m/int8/tflite/a.bin")  # outside it: absolute
    assert a.is_dir()


def test_load_folder_without_sweep(tmp_path):
    with pytest.raises(UserError) as e:
        report.load([tmp_path])
    assert str(e.value) == f"{tmp_path} has no sweep.json; run `edge sweep PLAN --out {tmp_path}` first"


@pytest.mark.parametrize("doc", [{"schema": 2, "rows": []}, {"schema": 1}, {"schema": 1, "rows": [{"cell": "x"}]}])
def test_load_rejects_what_is_not_a_sweep(tmp_path, doc):
    (tmp_path / "sweep.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="sweep"):
        report.load([tmp_path])


def _chromium() -> str | None:
    import shutil

    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (Debian: apt-get install chromium; "
                                                "`make sysdeps` installs it)")
def test_html_renders_in_headless_chromium(tmp_path, sweep_rows):
    """The report opens in a real browser with no network: the DOM Chromium builds holds the
    tables and every plot, nothing failed to load, and the screenshot is not blank. The
    screenshot is kept in $EDGE_TEST_ARTIFACTS (default: test-artifacts/)."""
    import os
    import subprocess

    import numpy as np
    from PIL import Image

    html_path, _ = report.write(sweep_rows, FAILED, tmp_path / "out")
    shots = Path(os.environ.get("EDGE_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    png = shots / "report.png"
    png.unlink(missing_ok=True)
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--proxy-server=127.0.0.1:9", "--window-size=1400,2400"]  # any fetch would fail loudly
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*base, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 5 and dom.stdout.count("<table>") >= 2
    errors = [ln for ln in dom.stderr.splitlines() if "net::ERR" in ln or "Failed to load" in ln
              or ("CONSOLE" in ln and "error" in ln.lower())]
    assert not errors, errors
    shot = subprocess.run([*base, f"--screenshot={png}", html_path.as_uri()], capture_output=True, text=True,
                          timeout=120, env=env)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.shape[0] >= 2000 and pixels.std() > 5  # text, tables and plots, not a blank page


def test_an_artifact_that_missed_its_budget_is_on_no_front(host_rows):
    rows = [r | {"top1": None} for r in host_rows]  # agreement: every row has it
    [host] = [g for g in report.groups(rows) if g.device == "host"]
    names = {(r["target"], r["precision"]) for r in host.latency_front + host.size_front}
    assert ("executorch", "int8") not in names  # fastest and smallest, but it failed parity
    assert ("tflite", "int8") in names and ("onnx", "fp32") in names
