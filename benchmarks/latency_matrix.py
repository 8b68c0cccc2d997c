"""Size and latency of MobileNetV2, ResNet18 and EfficientNet-Lite0 for every target and
precision, at 1 and 2 threads, with accuracy and agreement from each build's parity report, and
the agreement of the emulated Raspberry Pi (arm64 under QEMU) with this host.

- EfficientNet-Lite0 has real ImageNet weights: int8 is calibrated on the 250 unlabelled photos
  of ../shared/data/imagenet-sample and every artifact is evaluated on its 750 labelled ones.
- MobileNetV2 and ResNet18 have no offline ImageNet weights here: they get random weights with
  batch-norm statistics re-estimated on the built-in photos. Their latency and size are real;
  their accuracy is not measurable, and "agreement" is with fp32 PyTorch on the built-in held-out
  crops (on random weights it says little about a trained network's int8 agreement).
- Latency: `edge bench` (each artifact in a fresh process), in --rounds rounds; each round times
  every artifact at 1 and 2 threads, so that all of them see the same spread of machine load.
  p50/p90 are the medians over the rounds of each round's p50/p90 (--runs timed runs each).
  "vs fp32" is the int8 (or fp16) p50 over the fp32 p50 of the same model and target, 1 thread.
- pi-emu: `edge bench --device pi-emu` on the .tflite and .onnx artifacts, output against the
  host's on one held-out photo (skipped, and said so, when the emulated Pi is not set up).

    python benchmarks/latency_matrix.py [--runs 30] [--rounds 3] [--work DIR]
        [--models mobilenetv2,resnet18,efficientnet_lite0]   (--work keeps the builds and reuses them)
        [--cells fp32:executorch,int8:executorch,int8:tflite --tag executorch]   (a subset, side by side)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, environment, save, unlabelled_calibration_dir  # noqa: E402

import torch  # noqa: E402

from edge.benchmark import bench  # noqa: E402
from edge.config import BuildConfig  # noqa: E402
from edge.models import MODELS  # noqa: E402
from edge.models.loading import random_bn_recalibrated_state  # noqa: E402
from edge.pipeline import build  # noqa: E402
from edge.targets import TARGETS  # noqa: E402

MODELS_DEFAULT = ("mobilenetv2", "resnet18", "efficientnet_lite0")
# (precision, targets): fp16 is a TFLite-only precision.
BUILDS = tuple((p, tuple(t.name for t in TARGETS if p in t.precisions)) for p in ("fp32", "fp16", "int8"))
# Record every figure, even a miss: this is a measurement, not a gate.
OPEN_BUDGET = {"max_abs": 1e9, "min_cosine": 0.0, "min_top1_agreement": 0.0, "min_top5_overlap": 0.0,
               "max_top1_drop": 100.0}

PUBLISHED = [
    # Figures quoted by this project's issue tracker as published elsewhere. Not measured here.
    ("MobileNetV2 int8, TFLite + XNNPACK, 4 threads", "Raspberry Pi 4 (Cortex-A72)", "about 17 ms"),
    ("MobileNetV2 int8, ExecuTorch (XNNPACK)", "Raspberry Pi 5 (Cortex-A76)", "about 4 ms"),
]


def build_all(model: str, work: Path, builds=BUILDS) -> list[dict]:
    import json

    done = sorted((work / model).rglob("manifest.json")) if (work / model).exists() else []
    if len(done) == sum(len(t) for _, t in builds):
        found = [json.loads(p.read_text()) | {"weights_kind": _kind(model)} for p in done]
        rank = {(prec, t): i for i, (prec, ts) in enumerate(builds) for t in ts}
        return sorted(found, key=lambda m: (rank[(m["precision"], m["target"])], m["target"]))
    return _build_all(model, work, builds)


def _kind(model: str) -> str:
    w = MODELS.get(model).weights
    return "imagenet" if w is not None and w.locate() else "random (BN re-estimated)"


def _build_all(model: str, work: Path, builds) -> list[dict]:
    real = MODELS.get(model).weights is not None and MODELS.get(model).weights.locate()
    if real:
        weights, ev = "imagenet", str(IMAGENET_SAMPLE)
        calib = str(unlabelled_calibration_dir(work / "calib")) if not (work / "calib").exists() else str(work / "calib")
    else:
        weights, ev, calib = str(work / f"{model}.pt"), None, None
        spec = MODELS.get(model)
        torch.save(random_bn_recalibrated_state(spec, spec.input_size), weights)
    manifests = []
    for precision, targets in builds:
        if not targets:
            continue
        cfg = BuildConfig(model=model, targets=targets, precision=precision, weights=weights, eval=ev,
                          calib=calib if precision == "int8" else None, budget=OPEN_BUDGET,
                          out=str(work / model / precision))
        manifests += build(cfg)
    for m in manifests:
        m["weights_kind"] = "imagenet" if real else "random (BN re-estimated)"
    return manifests


def artifact_path(work: Path, m: dict) -> Path:
    folder = work / m["model"] / m["precision"]
    sub = folder / m["target"] if (folder / m["target"] / "manifest.json").exists() else folder
    return sub / m["artifact"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--work", help="keep the builds here and reuse them on the next run")
    ap.add_argument("--models", default=",".join(MODELS_DEFAULT))
    ap.add_argument("--no-pi-emu", action="store_true")
    ap.add_argument("--cells", help="only these precision:target cells, e.g. fp32:executorch,int8:executorch,"
                    "int8:tflite (results saved as latency_matrix-TAG)")
    ap.add_argument("--tag", help="name of a partial run's results (with --cells)")
    a = ap.parse_args()
    builds = BUILDS
    if a.cells:
        wanted = {tuple(c.split(":")) for c in a.cells.split(",")}
        builds = tuple((p, tuple(t for t in ts if (p, t) in wanted)) for p, ts in BUILDS)
    with tempfile.TemporaryDirectory(prefix="edge-matrix-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifests = [m for model in a.models.split(",") for m in build_all(model, work, builds)]
        rows = [{"m": m, "path": artifact_path(work, m), "lat": {1: [], 2: []}} for m in manifests]
        for rnd in range(a.rounds):
            for r in rows:
                for threads in (1, 2):
                    (res,) = bench([str(r["path"])], threads=threads, runs=a.runs, warmup=a.warmup)
                    r["lat"][threads].append(res)
        emu = pi_emu(rows, a.no_pi_emu, work / "pi_emu.json" if a.work else None)
    data = {"environment": environment(threads=None), "runs": a.runs, "rounds": a.rounds, "warmup": a.warmup,
            "pi_emu": emu["status"], "rows": [row_json(r, emu) for r in rows], "published": PUBLISHED}
    save(f"latency_matrix-{a.tag}" if a.tag else "latency_matrix", data, markdown(data))


def pi_emu(rows: list[dict], skip: bool, cache: Path | None) -> dict:
    """The emulated Pi's output against the host's, per artifact (not timing: reused from --work)."""
    import json

    from edge.device import piemu
    from edge.device.remote import PiEmu
    from edge.errors import EdgeError

    if skip:
        return {"status": "not run (--no-pi-emu)"}
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    if piemu.info() is None:
        return {"status": "not run: the emulated Pi is not set up (edge device setup pi-emu)"}
    out = {"status": f"run: Debian {piemu.SUITE} arm64 under QEMU, {piemu.info()['versions']}"}
    for r in rows:
        if piemu.runs(r["path"]):
            try:
                (res,) = bench([str(r["path"])], threads=1, runs=1, warmup=0, device=PiEmu())
                out[str(r["path"])] = res["parity_vs_host"]
            except EdgeError as e:
                out[str(r["path"])] = {"passed": False, "failures": [str(e)]}
    if cache is not None:
        cache.write_text(json.dumps(out))
    return out


def row_json(r: dict, emu: dict) -> dict:
    m, p = r["m"], r["m"]["parity"]
    e = emu.get(str(r["path"]))
    lat = {f"p{q}_ms_{t}t": round(statistics.median([x["latency_ms"][f"p{q}"] for x in r["lat"][t]]), 2)
           for t in (1, 2) for q in (50, 90)}
    return {"model": m["model"], "weights": m["weights_kind"], "target": m["target"],
            "precision": m["precision"], "size_mb": round(m["size_bytes"] / 1e6, 2), **lat,
            "rounds_p50_ms_1t": [round(x["latency_ms"]["p50"], 2) for x in r["lat"][1]],
            "runtime": r["lat"][1][0]["runtime"], "peak_rss_mb": round(r["lat"][1][0]["peak_rss_bytes"] / 1e6, 1),
            "top1": p.get("top1"), "fp32_top1": p.get("reference_top1"),
            "top1_agreement": p.get("top1_agreement"), "mean_cosine": p.get("mean_cosine"),
            "parity_samples": p["samples"], "parity_source": p["sample_source"],
            "pi_emu": None if e is None else {k: e.get(k) for k in ("passed", "top1_agreement", "min_cosine",
                                                                   "max_abs_diff", "failures")}}


def _vs_fp32(rows: list[dict], r: dict) -> str:
    base = [b for b in rows if b["model"] == r["model"] and b["target"] == r["target"] and b["precision"] == "fp32"]
    return f"{r['p50_ms_1t'] / base[0]['p50_ms_1t']:.2f}x" if base and r["precision"] != "fp32" else "-"


def _vs_tflite(rows: list[dict], r: dict) -> str:
    """p50 at 1 thread over the TFLite artifact of the same model and precision, same run."""
    base = [b for b in rows if b["model"] == r["model"] and b["target"] == "tflite" and b["precision"] == r["precision"]]
    return f"{r['p50_ms_1t'] / base[0]['p50_ms_1t']:.2f}x" if base and r["target"] != "tflite" else "-"


def markdown(d: dict) -> str:
    from edge.device import piemu

    env = d["environment"]
    lines = [f"# Size and latency: every model, target and precision ({env['date']})", "",
             f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores; load average at start "
             f"{env['load_average_at_start']}. `edge bench`, each artifact in a fresh process; {d['rounds']} rounds, "
             f"each timing every artifact at 1 and 2 threads ({d['runs']} timed runs after {d['warmup']} warm-up); "
             "p50/p90 are medians over the rounds. vs fp32: p50 at 1 thread over the same model and target's fp32. "
             f"Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items() if v)}.", "",
             "Accuracy: top-1 on the 750 labelled photos of ../shared/data/imagenet-sample (EfficientNet-Lite0 only; "
             "the others have no offline ImageNet weights and run with random weights). Agreement: top-1 agreement "
             "with fp32 PyTorch on the parity samples. pi-emu: the same artifact in arm64 Bookworm under QEMU "
             "against this host, on one held-out photo (cosine; emulated timings are not reported).", "",
             "| model | weights | target | precision | size MB | p50 ms 1t | p90 ms 1t | p50 ms 2t | p90 ms 2t "
             "| vs fp32 | vs TFLite | top-1 % | fp32 top-1 % | agreement | pi-emu cosine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        e = r["pi_emu"]
        emu = ("not run" if TARGETS.get(r["target"]).runner_backend in piemu.BACKENDS else
               f"n/a (no {TARGETS.get(r['target']).runtime} in the Pi root)") if e is None else \
            (f"{e['min_cosine']:.5f}" if e["passed"] else "FAILED: " + "; ".join(e["failures"]))
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "n/a"
        ref = f"{r['fp32_top1']:.2f}" if r["fp32_top1"] is not None else "n/a"
        agree = f"{r['top1_agreement']:.3f} ({r['parity_samples']})" if r["top1_agreement"] is not None else "-"
        lines.append(f"| {r['model']} | {r['weights']} | {r['target']} | {r['precision']} | {r['size_mb']} "
                     f"| {r['p50_ms_1t']} | {r['p90_ms_1t']} | {r['p50_ms_2t']} | {r['p90_ms_2t']} "
                     f"| {_vs_fp32(d['rows'], r)} | {_vs_tflite(d['rows'], r)} | {top1} | {ref} | {agree} | {emu} |")
    lines += ["", f"pi-emu: {d['pi_emu']}", "", "## Published figures (not measured here)", "",
              "| model and runtime | device | latency |", "|---|---|---|",
              *(f"| {a} | {b} | {c} (published) |" for a, b, c in d["published"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
