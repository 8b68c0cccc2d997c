"""QAT against PTQ: EfficientNet-Lite0 with its real ImageNet weights. Both calibrate on the 250
unlabelled photos of ../shared/data/imagenet-sample; QAT also fine-tunes on them by distillation
from the fp32 model (no labels). Top-1 on the 750 labelled photos, every artifact run in its own
runtime, PTQ and QAT for every target in the same run.
Bar: for every target, QAT int8 top-1 >= PTQ int8 top-1, and QAT within 0.5 pp of fp32.

    python benchmarks/qat_int8.py [--epochs 8] [--lr 1e-4] [--max-steps N] [--threads 1] [--tag NAME]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, environment, save, unlabelled_calibration_dir  # noqa: E402

from edge.config import BuildConfig  # noqa: E402
from edge.pipeline import build  # noqa: E402
from edge.targets import TARGETS  # noqa: E402

BAR_PP = 0.5


def run(work: Path, name: str, **qat) -> dict[str, dict]:
    """One int8 build of every target; a generous budget so that every figure gets recorded."""
    cfg = BuildConfig(model="efficientnet_lite0", targets=tuple(TARGETS.names()), precision="int8",
                      weights="imagenet", calib=str(work / "calib"), eval=str(IMAGENET_SAMPLE),
                      out=str(work / name), budget={"max_top1_drop": 100.0}, **qat)
    return {m["target"]: m for m in build(cfg)}


def row(target: str, ptq: dict, qat: dict) -> dict:
    p, q = ptq["parity"], qat["parity"]
    return {"target": target, "fp32_top1": p["reference_top1"], "ptq_top1": p["top1"], "qat_top1": q["top1"],
            "qat_minus_ptq_pp": round(q["top1"] - p["top1"], 2),
            "qat_minus_fp32_pp": round(q["top1"] - q["reference_top1"], 2),
            "ptq_top1_agreement": p.get("top1_agreement"), "qat_top1_agreement": q.get("top1_agreement"),
            "ptq_mean_cosine": p.get("mean_cosine"), "qat_mean_cosine": q.get("mean_cosine"),
            "ptq_method": _method(ptq), "qat_method": _method(qat),
            "ptq_build_seconds": ptq["build"]["seconds"], "qat_export_seconds": qat["build"]["seconds"]}


def _method(m: dict) -> str | None:
    q = (m.get("target_details") or {}).get("quantization") or {}
    return q.get("method") or (m.get("calibration") or {}).get("method")


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--epochs", type=int, default=8, help="16 steps each (~6 s per step at 1 thread here)")
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--max-steps", type=int)
    a.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    a.add_argument("--tag", help="save as results/qat_int8-TAG.{md,json} (for a variant of the recipe)")
    args = a.parse_args()
    env = environment(args.threads)  # at the start: the commit that actually runs
    if not IMAGENET_SAMPLE.exists():
        sys.exit(f"needs {IMAGENET_SAMPLE} (the shared ImageNet sample)")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edge-qat-"))
    unlabelled_calibration_dir(work / "calib")
    ptq = run(work, "ptq")
    qat = run(work, "qat", qat=True, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps)
    recipe = next(iter(qat.values()))["qat"]
    rows = [row(t, ptq[t], qat[t]) for t in TARGETS.names()]
    passed = all(r["qat_minus_ptq_pp"] >= 0 and r["qat_minus_fp32_pp"] >= -BAR_PP for r in rows)
    data = {"environment": env, "training_and_calibration": "250 unlabelled photos "
            "(class_index -1), distillation from fp32", "evaluation": "750 labelled photos", "bar_pp": BAR_PP,
            "passed": passed, "qat_recipe": recipe, "rows": rows}
    lines = ["# QAT vs PTQ int8: EfficientNet-Lite0 (ImageNet weights) on the shared ImageNet sample\n",
             f"{env['date']}, {env['machine']['processor']}, {env['machine']['cpu_count']} cores, "
             f"{args.threads} torch thread(s), edge {env['git_commit']}. PTQ calibrates on the 250 unlabelled "
             f"photos; QAT fine-tunes on the same photos by distillation from fp32 ({recipe['steps']} steps of "
             f"{recipe['batch_size']}, {recipe['epochs']} epochs, lr {recipe['lr']:g}, observers frozen "
             f"at step {recipe['freeze_step']}, BN statistics from step {recipe['bn_stats_freeze_step']}, "
             f"loss {recipe['loss_start']:.4f} -> {recipe['loss_end']:.4f}, "
             f"{recipe['seconds']:.0f} s of training), then each target quantizes as described in the README. "
             f"Top-1 on 750 labelled photos, each artifact in its own runtime.\n",
             "| target | fp32 top-1 | PTQ top-1 | QAT top-1 | QAT - PTQ pp | QAT - fp32 pp | "
             "top-1 agreement PTQ / QAT | mean cosine PTQ / QAT |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['fp32_top1']:.2f} | {r['ptq_top1']:.2f} | {r['qat_top1']:.2f} | "
                     f"{r['qat_minus_ptq_pp']:+.2f} | {r['qat_minus_fp32_pp']:+.2f} | "
                     f"{r['ptq_top1_agreement']:.3f} / {r['qat_top1_agreement']:.3f} | "
                     f"{r['ptq_mean_cosine']:.4f} / {r['qat_mean_cosine']:.4f} |")
    lines.append(f"\n**Bar: for every target QAT >= PTQ and QAT within {BAR_PP} pp of fp32 -> "
                 f"{'PASS' if passed else 'FAIL'}**\n")
    save("qat_int8" + (f"-{args.tag}" if args.tag else ""), data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
