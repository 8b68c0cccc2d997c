"""QAT against PTQ with data that can resolve the difference: EfficientNet-Lite0 with its 1000
ImageNet classes, int8 TFLite and ONNX, 1000-way top-1 on imagenette/eval (4,000 photos) and on the
750 labelled photos of the ImageNet sample, each artifact in its own runtime, a paired test for
every difference.

Three `edge build`s on the command line, all calibrated on the same 500 photos drawn at random
(seed 0) from imagenette/train (so that calibration spans its 10 classes):

    ptq             --int8
    qat-distill     --int8 --qat --max-steps N                  (no labels: distillation from fp32
                                                                 on the calibration photos)
    qat-labelled    --int8 --qat --max-steps N --train imagenette/train
                                                                (cross-entropy on the labels plus
                                                                 the distillation term)

The labelled recipe sees labels of imagenette's 10 classes only; a gain on imagenette/eval that
does not hold on the ImageNet sample's 150 classes would be that bias, not quantization, which is
why both sets are scored.

    python benchmarks/qat_imagenette.py [--max-steps 100] [--work DIR] [--configs ptq qat-distill ...]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, SHARED, accuracy_table, cli_build, environment, save  # noqa: E402
from compress_lite0 import mcnemar  # noqa: E402
from prune_lite0_1000 import predictions  # noqa: E402

IMAGENETTE = SHARED / "imagenette"
TARGETS = ("tflite", "onnx")
CONFIGS = ("ptq", "qat-distill", "qat-labelled")


def calibration(dest: Path, n: int = 500) -> Path:
    import numpy as np

    if dest.is_dir():
        return dest
    dest.mkdir(parents=True)
    with open(IMAGENETTE / "train" / "labels.csv", newline="") as f:
        files = sorted(row["file"] for row in csv.DictReader(f))
    for i in sorted(np.random.default_rng(0).choice(len(files), n, replace=False)):
        (dest / files[i]).symlink_to(IMAGENETTE / "train" / "images" / files[i])
    return dest


def build(name: str, extra: list[str], work: Path, calib: Path) -> dict:
    return cli_build(work / name, ["--model", "efficientnet_lite0", "--int8", "--target", ",".join(TARGETS),
                                   "--calib", str(calib), *extra], TARGETS)


def main() -> None:
    import numpy as np

    from edge.data import load_images, load_labelled
    from edge.models import MODELS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "sweeps" / "qat-imagenette")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                    help="the QAT recipes to build (ptq, which every one is compared with, always is)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    calib = calibration(a.work / "calib500")
    steps = ["--qat", "--max-steps", str(a.max_steps)]
    every = {"ptq": [], "qat-distill": steps, "qat-labelled": [*steps, "--train", str(IMAGENETTE / "train")]}
    configs = {c: every[c] for c in CONFIGS if c == "ptq" or c in a.configs}
    builds = {c: build(c, extra, a.work, calib) for c, extra in configs.items()}
    pre = MODELS.get("efficientnet_lite0").preprocess
    sets = {"imagenette-eval": load_labelled(IMAGENETTE / "eval"), "imagenet-sample": load_labelled(IMAGENET_SAMPLE)}
    rows, tests = [], {}
    for sname, ds in sets.items():
        x, labels = load_images(ds.paths, pre, progress=f"loading {sname}"), np.asarray(ds.labels)
        preds = {c: predictions(a.work / c, x) for c in configs}
        rows.append({"set": sname, "config": "fp32", "artifact": "pytorch", "photos": len(labels),
                     "top1": round(100 * float((preds["ptq"]["fp32"] == labels).mean()), 2)})
        for c in configs:
            for t in TARGETS:
                rows.append({"set": sname, "config": c, "artifact": t, "photos": len(labels),
                             "top1": round(100 * float((preds[c][t] == labels).mean()), 2)})
        for t in TARGETS:
            for q in [c for c in configs if c != "ptq"]:
                tests[f"{sname}: {t} {q} vs ptq"] = mcnemar(preds["ptq"][t], preds[q][t], labels)
            for c in configs:
                tests[f"{sname}: {t} {c} vs fp32"] = mcnemar(preds["ptq"]["fp32"], preds[c][t], labels)
    qat = {c: next((s for s in json.loads((a.work / c / "tflite" / "manifest.json").read_text())["stages"]
                    if s["stage"] == "qat"), None) for c in configs}
    env = environment()
    md = ["# QAT against PTQ on imagenette, EfficientNet-Lite0 1000 classes (`benchmarks/qat_imagenette.py`)", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}. Calibration: 500 photos of imagenette/train drawn "
          f"at random; QAT {a.max_steps} steps of 16. 1000-way top-1, each artifact in its own runtime. Builds: "
          + ", ".join(f"{c} {(b.get('seconds') or 0) / 60:.1f} min" for c, b in builds.items()) + ".", "",
          "| set | configuration | artifact | top-1 % |", "|---|---|---|---|"]
    md += [f"| {r['set']} ({r['photos']}) | {r['config']} | {r['artifact']} | {r['top1']:.2f} |" for r in rows]
    md += ["", *accuracy_table(tests)]
    md += ["", "QAT as the builds recorded it:", ""]
    md += [f"- {c}: {json.dumps({k: v for k, v in s.items() if k in ('objective', 'steps', 'best_step', 'lr', 'data', 'recipe', 'held_out')})}"
           for c, s in qat.items() if s]
    md += ["", "Builds:", ""] + [f"- {c}: `{b.get('command', '(reused)')}`" for c, b in builds.items()]
    save("qat_imagenette", {"rows": rows, "accuracy_tests": tests, "qat": qat, "builds": builds,
                            "max_steps": a.max_steps, "environment": env}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
