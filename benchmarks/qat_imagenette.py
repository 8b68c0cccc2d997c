"""QAT against PTQ with data that can resolve the difference, every target (TFLite, ONNX,
ExecuTorch `.pte`, TorchScript-mobile `.ptl`), each artifact in its own runtime, a paired test for
every difference. Two networks:

- EfficientNet-Lite0 with its 1000 ImageNet classes: 1000-way top-1 on imagenette/eval (4,000
  photos) and on the 750 labelled photos of the ImageNet sample;
- the same fine-tuned to imagenette's 10 classes (`--finetune --train imagenette/train`, the
  network of benchmarks/compress_lite0.py): 10-way top-1 on imagenette/eval.

One `edge build` per configuration on the command line, all calibrated on the same 500 photos
drawn at random (seed 0) from imagenette/train (so that calibration spans its 10 classes):

    ptq             --int8
    qat-distill     --int8 --qat --max-steps N                  (no labels: distillation from fp32
                                                                 on the calibration photos)
    qat-labelled    --int8 --qat --max-steps N --train imagenette/train
                                                                (cross-entropy on the labels plus
                                                                 the distillation term)
    ft-ptq          --int8 --finetune --train imagenette/train
    ft-qat          --int8 --finetune --train imagenette/train --qat --max-steps N
                                                                (labelled: the network's own classes)

The labelled recipe on the 1000-class network sees labels of imagenette's 10 classes only; a gain
on imagenette/eval that does not hold on the ImageNet sample's 150 classes would be that bias, not
quantization, which is why both sets are scored. On the 10-class network the labels are its own
classes, so ft-qat against ft-ptq is the clean question.

A build folder that already holds manifests is reused with the targets it has (the committed
qat-labelled build has TFLite and ONNX only: 23 minutes, and its question was answered on those).

    python benchmarks/qat_imagenette.py [--max-steps 100] [--work DIR] [--configs ptq qat-distill ...]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, SHARED, accuracy_table, class_labels, cli_build, environment  # noqa: E402
from _common import save  # noqa: E402
from compress_lite0 import mcnemar, predictions  # noqa: E402

IMAGENETTE = SHARED / "imagenette"
TARGETS = ("tflite", "onnx", "executorch", "torchscript-mobile")
CONFIGS = ("ptq", "qat-distill", "qat-labelled", "ft-ptq", "ft-qat")
FINETUNED = ("ft-ptq", "ft-qat")  # 10 classes; the rest keep ImageNet's 1000
SHOWN = ("data", "objective", "steps", "lr", "loss_start", "loss_end", "holdout", "selected_step")


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


def targets_of(out: Path) -> tuple[str, ...]:
    """The targets a finished build folder holds (reused as it is), else every target."""
    have = tuple(t for t in TARGETS if (out / t / "manifest.json").is_file())
    return have if have and (out / "build.json").is_file() else TARGETS


def qat_records(out: Path, targets) -> dict:
    """A build's QAT as its manifests record it: the qat stage (the FX recipe) and, for a .pte,
    ExecuTorch's own PT2E training; {} for a PTQ build."""
    m = json.loads((out / targets[0] / "manifest.json").read_text())
    recs = {"fx": s for s in m["stages"] if s["stage"] == "qat"}
    if recs and "executorch" in targets:
        pte = json.loads((out / "executorch" / "manifest.json").read_text())
        recs["pt2e"] = pte["target_details"]["quantization"]["qat"]
    return recs


def build(name: str, extra: list[str], work: Path, calib: Path) -> dict:
    targets = targets_of(work / name)
    return {**cli_build(work / name, ["--model", "efficientnet_lite0", "--int8", "--target", ",".join(targets),
                                      "--calib", str(calib), *extra], targets), "targets": list(targets)}


def main() -> None:
    from edge.data import load_images, load_labelled
    from edge.models import MODELS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "sweeps" / "qat-imagenette")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                    help="the recipes to build (ptq or ft-ptq, which each QAT recipe is compared with, always is)")
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    calib = calibration(a.work / "calib500")
    steps = ["--qat", "--max-steps", str(a.max_steps)]
    train = ["--train", str(IMAGENETTE / "train")]
    every = {"ptq": [], "qat-distill": steps, "qat-labelled": [*steps, *train],
             "ft-ptq": ["--finetune", *train], "ft-qat": ["--finetune", *train, *steps]}
    wanted = set(a.configs)
    wanted |= {"ptq"} if wanted - set(FINETUNED) else set()
    wanted |= {"ft-ptq"} if wanted & set(FINETUNED) else set()
    configs = {c: every[c] for c in (*FINETUNED, *CONFIGS) if c in wanted}
    builds = {c: build(c, extra, a.work, calib) for c, extra in configs.items()}
    if a.build_only:
        return
    pre = MODELS.get("efficientnet_lite0").preprocess
    groups = {"1000 classes": ("ptq", [c for c in configs if c not in FINETUNED], ("imagenette-eval", "imagenet-sample")),
              "10 classes": ("ft-ptq", [c for c in configs if c in FINETUNED], ("imagenette-eval",))}
    sets = {"imagenette-eval": load_labelled(IMAGENETTE / "eval"), "imagenet-sample": load_labelled(IMAGENET_SAMPLE)}
    rows, tests, same_fp32 = [], {}, {}
    for sname, ds in sets.items():
        x = load_images(ds.paths, pre, progress=f"loading {sname}")
        for net, (base, members, set_names) in groups.items():
            if not members or sname not in set_names:
                continue
            labels = class_labels(json.loads((a.work / base / "tflite" / "manifest.json").read_text()), ds.labels)
            preds = {c: predictions(a.work / c, x, builds[c]["targets"]) for c in members}
            rows.append({"set": sname, "network": net, "config": "fp32", "artifact": "pytorch", "photos": len(labels),
                         "top1": round(100 * float((preds[base]["fp32"] == labels).mean()), 2)})
            for c in members:
                same_fp32[f"{sname}: {c}"] = bool((preds[c]["fp32"] == preds[base]["fp32"]).all())
                for t in builds[c]["targets"]:
                    rows.append({"set": sname, "network": net, "config": c, "artifact": t, "photos": len(labels),
                                 "top1": round(100 * float((preds[c][t] == labels).mean()), 2)})
            for t in TARGETS:
                for q in [c for c in members if c != base and t in builds[c]["targets"]]:
                    tests[f"{sname}, {net}: {t} {q} vs {base}"] = mcnemar(preds[base][t], preds[q][t], labels)
                for c in [c for c in members if t in builds[c]["targets"]]:
                    tests[f"{sname}, {net}: {t} {c} vs fp32"] = mcnemar(preds[base]["fp32"], preds[c][t], labels)
    qat = {c: qat_records(a.work / c, builds[c]["targets"]) for c in configs}
    env = environment()
    md = ["# QAT against PTQ on imagenette, EfficientNet-Lite0, every target (`benchmarks/qat_imagenette.py`)", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}. Calibration: 500 photos of imagenette/train drawn "
          f"at random; QAT {a.max_steps} steps of 16. Top-1 over the network's classes (1000-way, or 10-way for the "
          "fine-tuned one), each artifact in its own runtime; fp32 is the network the PTQ artifacts were converted "
          "from. Builds: " + ", ".join(f"{c} {(b.get('seconds') or 0) / 60:.1f} min" for c, b in builds.items()) + ".",
          "", "| set | network | configuration | artifact | top-1 % |", "|---|---|---|---|---|"]
    md += [f"| {r['set']} ({r['photos']}) | {r['network']} | {r['config']} | {r['artifact']} | {r['top1']:.2f} |"
           for r in rows]
    md += ["", "Each build's fp32 network gives the same top-1 per photo as its PTQ counterpart's (the same "
           f"fine-tune, deterministic): {all(same_fp32.values())}", ""]
    md += [*accuracy_table(tests)]
    md += ["", "QAT as the builds recorded it (fx: the recipe the `.ptl` converts and the other targets "
           "quantize the float network of; pt2e: ExecuTorch's own training; loss: means over the first and last "
           "quarter of the steps):", ""]
    md += [f"- {c} {flow}: {json.dumps({k: v for k, v in r.items() if k in SHOWN})}"
           for c, recs in qat.items() for flow, r in recs.items()]
    md += ["", "Builds:", ""] + [f"- {c}: `{b.get('command', '(reused)')}`" for c, b in builds.items()]
    save("qat_imagenette", {"rows": rows, "accuracy_tests": tests, "same_fp32": same_fp32, "qat": qat,
                            "builds": builds, "max_steps": a.max_steps, "environment": env}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
