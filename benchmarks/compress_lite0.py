"""EfficientNet-Lite0 fine-tuned to imagenette's 10 classes, then pruned, distilled and int8: what
each step buys, on ../shared/data/imagenette (train/ for every kind of training and for
calibration, eval/ for accuracy only).

Each configuration is one `edge build` on the command line, as a user runs it, timed end to end:

    finetuned      --finetune                         (head, then the whole network)
    pruned-0.60    --finetune --prune-macs 0.6        (then distilled from the fine-tuned network)
    pruned-0.60-uniform   the same with --prune-allocation uniform (every layer group cut alike)
    pruned-0.75    --finetune --prune-macs 0.75       (a milder cut, the same way)
    ...

all `--int8 --target tflite,onnx,executorch`, calibrated on the first 500 photos of train/.
Then, per artifact: top-1 on the 4,000 eval photos in its own runtime (per photo, for McNemar's
test between any two), MACs and parameters from the manifest's stages, size, and p50 at 1 thread
of the TFLite and ONNX artifacts, every artifact timed in one process, interleaved run by run.

    python benchmarks/compress_lite0.py [--configs finetuned pruned-0.60 pruned-0.60-uniform pruned-0.75] [--runs 200] [--work DIR]

--work (default benchmarks/sweeps/compress-lite0) keeps the builds; a configuration whose build
folder holds manifests is not built again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import SHARED, accuracy_table, class_labels, cli_build, environment, interleaved_times, latency_table  # noqa: E402
from _common import paired_times, save  # noqa: E402
from lite0_imagenette import calibration_dir  # noqa: E402

IMAGENETTE = SHARED / "imagenette"
TARGETS = ("tflite", "onnx", "executorch")
CONFIGS = {"finetuned": [], "pruned-0.60": ["--prune-macs", "0.6", "--distill-epochs", "2"],
           "pruned-0.60-uniform": ["--prune-macs", "0.6", "--prune-allocation", "uniform", "--distill-epochs", "2"],
           "pruned-0.75": ["--prune-macs", "0.75", "--distill-epochs", "2"],
           "pruned-0.45": ["--prune-macs", "0.45", "--distill-epochs", "2"]}
WARMUP = 20


def build(name: str, work: Path, calib: Path) -> dict:
    return cli_build(work / name, ["--model", "efficientnet_lite0", "--int8", "--target", ",".join(TARGETS), "--finetune",
                                   "--train", str(IMAGENETTE / "train"), "--eval", str(IMAGENETTE / "eval"),
                                   "--calib", str(calib), *CONFIGS[name]], TARGETS)


def stage_figures(m: dict) -> dict:
    stages = {s["stage"]: s for s in m["stages"]}
    first = stages["finetune"]["before"]
    last = next(stages[s]["after"] for s in ("distill", "prune", "finetune") if s in stages)
    return {"macs": last["macs"], "params": last["params"], "macs_vs_lite0": round(last["macs"] / first["macs"], 3),
            "head_held_out_top1": stages["finetune"]["head"]["held_out_top1"],
            "kl_to_teacher": (stages.get("distill") or {}).get("kl_to_teacher"),
            "stage_seconds": {k: v.get("seconds") for k, v in stages.items() if v.get("seconds") is not None}}


def predictions(out: Path, x, targets=TARGETS) -> dict:
    """Top-1 per photo: each artifact in its runtime, and the fp32 network it was built from."""
    import numpy as np

    from edge.runner import TorchRunner
    from edge.targets import TARGETS as REG
    from edge.verification import reference_model

    preds = {}
    for t in targets:
        m = json.loads((out / t / "manifest.json").read_text())
        y = REG.get(t).load(out / t / m["artifact"], m).run(x)
        preds[t] = np.argmax(next(iter(y.values())), 1)
    spec, net = reference_model(m, folder=out / t)
    preds["fp32"] = np.argmax(next(iter(TorchRunner(net, spec).run(x).values())), 1)
    return preds


def mcnemar(a, b, labels) -> dict:
    import numpy as np
    from scipy.stats import binomtest

    ca, cb = a == labels, b == labels
    n01, n10 = int((~ca & cb).sum()), int((ca & ~cb).sum())
    diff = cb.astype(float) - ca.astype(float)
    rng = np.random.default_rng(0)
    boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
    return {"diff_pp": round(100 * diff.mean(), 2), "ci95_pp": [round(100 * np.percentile(boot, q), 2) for q in (2.5, 97.5)],
            "mcnemar_p": float(binomtest(n01, n01 + n10, 0.5).pvalue) if n01 + n10 else 1.0,
            "only_a_right": n10, "only_b_right": n01}


def main() -> None:
    from edge.data import load_images, load_labelled
    from edge.models import MODELS
    from tflite_vs_onnx import runner

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["finetuned", "pruned-0.60", "pruned-0.60-uniform", "pruned-0.75"],
                    choices=list(CONFIGS))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "sweeps" / "compress-lite0")
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    calib = a.work / "calib500"
    if not calib.is_dir():
        calibration_dir(calib, 500)
    builds = {c: build(c, a.work, calib) for c in a.configs}
    if a.build_only:
        return
    ds = load_labelled(IMAGENETTE / "eval")
    x = load_images(ds.paths, MODELS.get("efficientnet_lite0").preprocess, progress="loading eval")
    rows, preds = [], {}
    for c in a.configs:
        out = a.work / c
        p = predictions(out, x)
        m0 = json.loads((out / "tflite" / "manifest.json").read_text())
        labels = class_labels(m0, ds.labels)
        figs = stage_figures(m0)
        for t, y in p.items():
            preds[f"{c} {t}"] = y
            size = (out / t / json.loads((out / t / "manifest.json").read_text())["artifact"]).stat().st_size \
                if t != "fp32" else None
            rows.append({"config": c, "artifact": t, "top1": round(100 * float((y == labels).mean()), 2),
                         "size_bytes": size, **figs, "build_seconds": builds[c].get("seconds")})
    tests = {}
    for c in a.configs:
        for t in TARGETS:
            tests[f"{c}: {t} int8 vs its fp32"] = mcnemar(preds[f"{c} fp32"], preds[f"{c} {t}"], labels)
    base = a.configs[0]
    for i, first in enumerate(a.configs):  # every pair of configurations
        for c in a.configs[i + 1:]:
            for t in ("fp32", *TARGETS):
                tests[f"{c} vs {first}: {t}"] = mcnemar(preds[f"{first} {t}"], preds[f"{c} {t}"], labels)
    # latency: TFLite and ONNX of every configuration, one process, 1 thread, interleaved
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    arts = {f"{c} {t}": a.work / c / t / json.loads((a.work / c / t / "manifest.json").read_text())["artifact"]
            for c in a.configs for t in ("tflite", "onnx")}
    names = list(arts)
    times, p50 = interleaved_times({n: runner(arts[n]) for n in names}, a.runs, WARMUP)
    speed = {f"{c} vs {base}: {t}": paired_times(times[f"{base} {t}"], times[f"{c} {t}"])
             for c in a.configs[1:] for t in ("tflite", "onnx")}
    env = environment(threads=1)
    md = ["# EfficientNet-Lite0 fine-tuned to imagenette, pruned, distilled, int8 (`benchmarks/compress_lite0.py`)", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}. Top-1 over the 10 classes on imagenette/eval "
          "(4,000 photos), each artifact in its own runtime; fp32 is the network the artifacts were converted from "
          "(reference.pt, in PyTorch). Training and calibration on imagenette/train only.", "",
          "| configuration | build (min) | MACs (M) | vs Lite0 | params (M) | artifact | size MB | top-1 % | p50 ms (1 thread) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = f"{r['config']} {r['artifact']}"
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e6:.2f}"
        md.append(f"| {r['config']} | {(r['build_seconds'] or 0) / 60:.1f} | {r['macs'] / 1e6:.1f} | {r['macs_vs_lite0']:.2f}x | "
                  f"{r['params'] / 1e6:.2f} | {r['artifact']} | "
                  f"{size} | {r['top1']:.2f} | "
                  f"{p50.get(n, '-')} |")
    md += ["", *accuracy_table(tests), "", *latency_table(speed, a.runs, WARMUP)]
    md += ["", "Builds:", ""] + [f"- {c}: `{builds[c].get('command', '(reused)')}`"
                                 + (f" ({builds[c]['note']})" if builds[c].get("note") else "") for c in a.configs]
    save("compress_lite0", {"rows": rows, "accuracy_tests": tests, "p50_ms": p50, "latency_tests": speed,
                            "builds": builds, "runs": a.runs, "environment": env}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
