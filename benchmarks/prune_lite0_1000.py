"""EfficientNet-Lite0 with its 1000 ImageNet classes, pruned and distilled on unlabelled photos:
what the cut costs as 1000-way top-1 on ../shared/data/imagenet-sample (750 labelled photos of
150 classes) and on imagenette/eval (4,000 photos of 10 classes).

Two `edge build`s on the command line, as a user runs them, timed end to end:

    lite0-1000            --int8                                  (the unpruned network)
    lite0-1000-pruned     --int8 --prune 0.3 --distill-epochs 2   (30% of each prunable group's channels)

both `--target tflite,onnx` with `--calib` a folder of unlabelled photos: the 250 unlabelled photos
of the ImageNet sample and 1,750 of imagenette/train drawn at random (seed 0), as symlinks. With no
`--train`, the prune stage re-fits, scans and distils on that folder without labels (the teacher's
softmax is the target), and int8 calibrates on it; no photo scored here is in it.

Then, per artifact and the fp32 network it was converted from: 1000-way top-1 on both sets in its
own runtime, a paired test (McNemar's exact, bootstrap 95% interval) for every difference, MACs,
size, and TFLite/ONNX p50 at 1 thread, interleaved in one process.

    python benchmarks/prune_lite0_1000.py [--runs 200] [--work DIR] [--photos 1750]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, SHARED, accuracy_table, cli_build, environment, interleaved_times  # noqa: E402
from _common import latency_table, paired_times, save, unlabelled_calibration_dir  # noqa: E402
from compress_lite0 import mcnemar, predictions as all_predictions  # noqa: E402

IMAGENETTE = SHARED / "imagenette"
TARGETS = ("tflite", "onnx")
CONFIGS = {"lite0-1000": [], "lite0-1000-pruned": ["--prune", "0.3", "--distill-epochs", "2"]}
WARMUP = 20


def unlabelled_dir(dest: Path, photos: int) -> Path:
    """The ImageNet sample's 250 unlabelled photos and `photos` of imagenette/train drawn at random."""
    import numpy as np

    if dest.is_dir():
        return dest
    unlabelled_calibration_dir(dest)
    with open(IMAGENETTE / "train" / "labels.csv", newline="") as f:
        files = sorted(row["file"] for row in csv.DictReader(f))
    for i in sorted(np.random.default_rng(0).choice(len(files), photos, replace=False)):
        (dest / files[i]).symlink_to(IMAGENETTE / "train" / "images" / files[i])
    return dest


def build(name: str, work: Path, calib: Path) -> dict:
    return cli_build(work / name, ["--model", "efficientnet_lite0", "--int8", "--target", ",".join(TARGETS),
                                   "--calib", str(calib), *CONFIGS[name]], TARGETS)


def predictions(out: Path, x) -> dict:
    return all_predictions(out, x, TARGETS)


def network_figures(m: dict) -> dict:
    stages = {s["stage"]: s for s in m["stages"]}
    s = stages.get("distill") or stages.get("prune")
    out = {"macs": None, "params": None, "stage_seconds": {k: v.get("seconds") for k, v in stages.items()
                                                          if v.get("seconds") is not None}}
    if s:
        out.update(macs=s["after"]["macs"], params=s["after"]["params"], macs_before=stages["prune"]["before"]["macs"],
                   kl_to_teacher=stages.get("distill", {}).get("kl_to_teacher"))
    return out


def main() -> None:
    import numpy as np

    from edge.data import load_images, load_labelled
    from edge.models import MODELS
    from tflite_vs_onnx import runner

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--photos", type=int, default=1750, help="imagenette/train photos in the unlabelled set")
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "sweeps" / "prune-lite0-1000")
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    calib = unlabelled_dir(a.work / f"unlabelled-{a.photos}", a.photos)
    builds = {c: build(c, a.work, calib) for c in CONFIGS}
    if a.build_only:
        return
    pre = MODELS.get("efficientnet_lite0").preprocess
    sets = {"imagenet-sample": load_labelled(IMAGENET_SAMPLE), "imagenette-eval": load_labelled(IMAGENETTE / "eval")}
    rows, tests, preds = [], {}, {}
    for sname, ds in sets.items():
        x, labels = load_images(ds.paths, pre, progress=f"loading {sname}"), np.asarray(ds.labels)
        for c in CONFIGS:
            for t, y in predictions(a.work / c, x).items():
                preds[sname, c, t] = y
                rows.append({"set": sname, "config": c, "artifact": t, "photos": len(labels),
                             "top1": round(100 * float((y == labels).mean()), 2)})
        first, second = CONFIGS
        for t in ("fp32", *TARGETS):
            tests[f"{sname}: pruned vs unpruned, {t}"] = mcnemar(preds[sname, first, t], preds[sname, second, t], labels)
        for c in CONFIGS:
            for t in TARGETS:
                tests[f"{sname}: {c} {t} int8 vs its fp32"] = mcnemar(preds[sname, c, "fp32"], preds[sname, c, t], labels)
    figs = {}
    for c in CONFIGS:
        m = json.loads((a.work / c / "tflite" / "manifest.json").read_text())
        figs[c] = {**network_figures(m), "build_seconds": builds[c].get("seconds"),
                   "size_bytes": {t: (a.work / c / t / json.loads((a.work / c / t / "manifest.json").read_text())
                                      ["artifact"]).stat().st_size for t in TARGETS},
                   "prune": next((s for s in m["stages"] if s["stage"] == "prune"), None)}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    arts = {f"{c} {t}": a.work / c / t / json.loads((a.work / c / t / "manifest.json").read_text())["artifact"]
            for c in CONFIGS for t in TARGETS}
    times, p50 = interleaved_times({n: runner(p) for n, p in arts.items()}, a.runs, WARMUP)
    first, second = CONFIGS
    speed = {f"pruned vs unpruned: {t}": paired_times(times[f"{first} {t}"], times[f"{second} {t}"]) for t in TARGETS}
    env = environment(threads=1)
    pr = figs[second]
    md = ["# EfficientNet-Lite0 (1000 classes) pruned and distilled on unlabelled photos (`benchmarks/prune_lite0_1000.py`)", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}. 1000-way top-1, each artifact in its own runtime; "
          "fp32 is the network the artifacts were converted from (reference.pt, in PyTorch). Pruning, distillation "
          f"and calibration saw only the unlabelled folder ({a.photos} imagenette/train photos + the sample's 250 "
          "unlabelled ones); no scored photo is in it.", "",
          f"Pruned network: {pr['macs'] / 1e6:.1f} M MACs ({pr['macs'] / pr['macs_before']:.2f}x Lite0's "
          f"{pr['macs_before'] / 1e6:.1f} M), {pr['params'] / 1e6:.2f} M parameters; KL to the teacher after "
          f"distillation {pr.get('kl_to_teacher')}. Builds: "
          + ", ".join(f"{c} {(figs[c]['build_seconds'] or 0) / 60:.1f} min" for c in CONFIGS) + ".", "",
          "| set | configuration | artifact | size MB | top-1 % | p50 ms (1 thread) |", "|---|---|---|---|---|---|"]
    for r in rows:
        size = figs[r["config"]]["size_bytes"].get(r["artifact"])
        md.append(f"| {r['set']} ({r['photos']}) | {r['config']} | {r['artifact']} | "
                  f"{'-' if size is None else f'{size / 1e6:.2f}'} | {r['top1']:.2f} | "
                  f"{p50.get(r['config'] + ' ' + r['artifact'], '-')} |")
    md += ["", *accuracy_table(tests), "", *latency_table(speed, a.runs, WARMUP)]
    md += ["", "Builds:", ""] + [f"- {c}: `{builds[c].get('command', '(reused)')}`" for c in CONFIGS]
    save("prune_lite0_1000", {"rows": rows, "accuracy_tests": tests, "p50_ms": p50, "latency_tests": speed,
                              "networks": figs, "builds": builds, "runs": a.runs, "environment": env},
         "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
