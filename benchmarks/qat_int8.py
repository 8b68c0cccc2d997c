"""QAT against PTQ: EfficientNet-Lite0 with its real ImageNet weights. Both calibrate on the 250
unlabelled photos of ../shared/data/imagenet-sample; QAT also fine-tunes on them by distillation
from the fp32 model (no labels). Top-1 on the 750 labelled photos, every artifact run in its own
runtime, PTQ and QAT for every target in the same run.
Bar: for every target, QAT int8 top-1 >= PTQ int8 top-1, and QAT within 0.5 pp of fp32.

    python benchmarks/qat_int8.py [--epochs 8] [--lr 1e-4] [--max-steps N] [--threads 1] [--tag NAME]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, environment, lite0_sample, save, unlabelled_calibration_dir  # noqa: E402

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


def outputs(work: Path, name: str, manifests: dict[str, dict], x) -> dict:
    """Each artifact run again in its own runtime on the labelled photos: its logits per image."""
    return {t: TARGETS.get(t).load(work / name / t / m["artifact"], m).run(x)["output"] for t, m in manifests.items()}


def paired(ref, labels, ptq, qat, resamples: int = 2000) -> dict:
    """QAT against PTQ on the same photos: the top-1 difference with a paired bootstrap 95% interval,
    McNemar's exact two-sided p-value on the photos only one of them gets right, and each one's KL
    divergence from fp32 and top-1 agreement with it (figures that do not hinge on a few photos)."""
    import numpy as np

    from edge.parity import top1_ties

    ok_p, ok_q = ptq.argmax(1) == labels, qat.argmax(1) == labels
    diff = ok_q.astype(float) - ok_p.astype(float)
    rng = np.random.default_rng(0)
    boots = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(1) * 100
    only_q, only_p = int((ok_q & ~ok_p).sum()), int((ok_p & ~ok_q).sum())
    k, n = min(only_q, only_p), only_q + only_p
    p_value = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0

    def kl(y):
        lr, ly = _log_softmax(ref), _log_softmax(y)
        return float((np.exp(lr) * (lr - ly)).sum(1).mean())

    return {"qat_minus_ptq_ci95_pp": [round(float(np.percentile(boots, 2.5)), 2),
                                      round(float(np.percentile(boots, 97.5)), 2)],
            "only_qat_right": only_q, "only_ptq_right": only_p, "mcnemar_p": round(p_value, 3),
            "ptq_kl_vs_fp32": round(kl(ptq), 5), "qat_kl_vs_fp32": round(kl(qat), 5),
            "ptq_top1_ties": top1_ties(ptq), "qat_top1_ties": top1_ties(qat),
            "ptq_agreement": round(float((ptq.argmax(1) == ref.argmax(1)).mean()), 4),
            "qat_agreement": round(float((qat.argmax(1) == ref.argmax(1)).mean()), 4)}


def _held_out(recipe: dict) -> str:
    h = recipe.get("holdout")
    if not h:
        return ""
    return (f"checkpoint picked by the loss on {h['samples']} held-out unlabelled photos: step "
            f"{h['selected_step']}, ")


def _log_softmax(y):
    import numpy as np

    y = y - y.max(1, keepdims=True)
    return y - np.log(np.exp(y).sum(1, keepdims=True))


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
    from edge.parity import accuracy

    _, _, x, labels, ref = lite0_sample(work, calib=False)
    y_ptq, y_qat = outputs(work, "ptq", ptq, x), outputs(work, "qat", qat, x)
    for r in rows:
        r.update(paired(ref, labels, y_ptq[r["target"]], y_qat[r["target"]]))
        for kind, y in (("ptq", y_ptq), ("qat", y_qat)):  # the same figure as the build's own check
            assert abs(accuracy(y[r["target"]], labels)[0] - r[f"{kind}_top1"]) < 0.01, (kind, r)
    passed = all(r["qat_minus_ptq_pp"] >= 0 and r["qat_minus_fp32_pp"] >= -BAR_PP for r in rows)
    data = {"environment": env, "training_and_calibration": "250 unlabelled photos "
            "(class_index -1), distillation from fp32", "evaluation": "750 labelled photos", "bar_pp": BAR_PP,
            "passed": passed, "qat_recipe": recipe, "rows": rows}
    lines = ["# QAT vs PTQ int8: EfficientNet-Lite0 (ImageNet weights) on the shared ImageNet sample\n",
             f"{env['date']}, {env['machine']['processor']}, {env['machine']['cpu_count']} cores, "
             f"{args.threads} torch thread(s), edge {env['git_commit']}. PTQ calibrates on the 250 unlabelled "
             f"photos; QAT fine-tunes on the same photos by distillation from fp32 ({recipe['steps']} steps of "
             f"{recipe['batch_size']} on {recipe.get('trained_on', recipe['samples'])} photos, {recipe['epochs']} "
             f"epochs, lr {recipe['lr']:g}, activation ranges: {recipe.get('range_init', 'moving min/max')}; "
             f"observers frozen at step {recipe['freeze_step']}, BN statistics from step "
             f"{recipe['bn_stats_freeze_step']}, loss {recipe['loss_start']:.4f} -> {recipe['loss_end']:.4f}, "
             f"{_held_out(recipe)}{recipe['seconds']:.0f} s of training), then each target quantizes as described "
             f"in the README. Top-1 on 750 labelled photos, each artifact in its own runtime (run twice: by the "
             f"build's check and again here for the paired figures; ties at the top go to the lower class "
             f"index, as argmax does). 1 photo = 0.13 pp.\n",
             "| target | fp32 top-1 | PTQ top-1 | QAT top-1 | QAT - PTQ pp (95% CI) | photos only QAT / only PTQ "
             "gets right (McNemar p) | QAT - fp32 pp | top-1 agreement with fp32 PTQ / QAT | "
             "KL from fp32 PTQ / QAT | photos with a tie at the top PTQ / QAT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["qat_minus_ptq_ci95_pp"]
        lines.append(f"| {r['target']} | {r['fp32_top1']:.2f} | {r['ptq_top1']:.2f} | {r['qat_top1']:.2f} | "
                     f"{r['qat_minus_ptq_pp']:+.2f} ({lo:+.2f} to {hi:+.2f}) | "
                     f"{r['only_qat_right']} / {r['only_ptq_right']} (p {r['mcnemar_p']:.2f}) | "
                     f"{r['qat_minus_fp32_pp']:+.2f} | {r['ptq_agreement']:.3f} / {r['qat_agreement']:.3f} | "
                     f"{r['ptq_kl_vs_fp32']:.4f} / {r['qat_kl_vs_fp32']:.4f} | "
                     f"{r['ptq_top1_ties']} / {r['qat_top1_ties']} |")
    lines.append(f"\n**Bar: for every target QAT >= PTQ and QAT within {BAR_PP} pp of fp32 -> "
                 f"{'PASS' if passed else 'FAIL'}**\n")
    save("qat_int8" + (f"-{args.tag}" if args.tag else ""), data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
