"""A case where PTQ clearly fails: EfficientNet-Lite0 with per-tensor int8 weights (one scale per
layer, as some accelerators require; PTQ loses several points on depthwise networks). PTQ and QAT
(distillation on the 250 unlabelled photos, the same recipe as benchmarks/qat_int8.py) with
per-tensor weights, each saved as a .ptl and run in the lite interpreter on the 750 labelled
photos. The targets themselves always use per-channel weights (benchmarks/qat_int8.py); this only
shows what QAT recovers where PTQ clearly fails.

    python benchmarks/qat_per_tensor.py [--epochs 8] [--lr 1e-3] [--threads 1]   (measured at lr 1e-3)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, lite0_sample, save  # noqa: E402

from edge.models import MODELS  # noqa: E402


def top1(traced, work: Path, name: str, x, labels) -> float:
    from edge.targets.base import ExportContext
    from edge.targets.torchscript_mobile import LiteRunner

    path = work / f"{name}.ptl"
    traced._save_for_lite_interpreter(str(path))
    io = ExportContext(None, MODELS.get("efficientnet_lite0"), work, {})
    y = LiteRunner(path, True, io.model_inputs(), io.model_outputs()).run(x)["output"]
    return round(100.0 * float((y.argmax(1) == labels).mean()), 2)


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--threads", type=int, default=1)
    args = a.parse_args()
    env = environment(args.threads)  # at the start: the commit that actually runs
    import torch

    from edge import training
    from edge.quantize import qat
    from edge.quantize.torch_ptq import quantize_torch, to_lite

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edge-qat-pt-"))
    model, calib, x, labels, ref = lite0_sample(work)
    example = torch.zeros(1, 3, 224, 224)
    fp32 = round(100.0 * float((ref.argmax(1) == labels).mean()), 2)
    rows = []
    for per_channel in (False,):  # per-channel: benchmarks/qat_int8.py
        ptq, _ = quantize_torch(model, example, calib, per_channel=per_channel)
        r = qat.fine_tune(model, example, training.TrainSet({"input": calib}, None, "250 unlabelled photos", "input"), epochs=args.epochs,
                          lr=args.lr, per_channel=per_channel)
        qtraced, _ = to_lite(r.prepared, example)
        kind = "per-channel" if per_channel else "per-tensor"
        rows.append({"weights": kind, "fp32_top1": fp32, "ptq_top1": top1(ptq, work, f"ptq-{kind}", x, labels),
                     "qat_top1": top1(qtraced, work, f"qat-{kind}", x, labels), "qat_recipe": r.record})
        print(rows[-1], flush=True)
    data = {"environment": env, "rows": rows}
    lines = ["# PTQ vs QAT with per-tensor weights: EfficientNet-Lite0 .ptl (lite interpreter)\n",
             f"{env['date']}, {env['machine']['cpu_count']} cores, {args.threads} torch thread(s), edge "
             f"{env['git_commit']}. Calibration and QAT distillation on the 250 unlabelled photos "
             f"({rows[0]['qat_recipe']['steps']} steps, lr {args.lr:g}); top-1 on the 750 labelled photos.\n",
             "| int8 weights | fp32 top-1 | PTQ top-1 | QAT top-1 | QAT - PTQ pp |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['weights']} | {r['fp32_top1']:.2f} | {r['ptq_top1']:.2f} | {r['qat_top1']:.2f} | "
                     f"{r['qat_top1'] - r['ptq_top1']:+.2f} |")
    save("qat_per_tensor", data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
