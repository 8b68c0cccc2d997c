"""Where QAT goes on the way: EfficientNet-Lite0 (ImageNet weights), distillation on the 250 unlabelled
photos, and at every checkpoint the fake-quantized student measured on the 750 labelled photos (top-1,
top-1 agreement with fp32, KL divergence from fp32) beside the held-out loss the recipe picks its
checkpoint by. A diagnostic: the labelled figures are never used to choose anything, they show
whether the held-out choice is a good one. Step 0 is the starting point (PTQ's ranges when
--range-init is histogram), whose fake-quant top-1 is what the PTQ .ptl gets.

    python benchmarks/qat_trajectory.py [--epochs 8] [--lr 1e-4] [--range-init histogram|none] [--tag NAME]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, lite0_sample, save  # noqa: E402


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--range-init", default="histogram", help="histogram (PTQ's ranges) or none (moving min/max)")
    a.add_argument("--holdout", type=float, default=None)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--tag", help="save as results/qat_trajectory-TAG.{md,json}")
    args = a.parse_args()
    env = environment(args.threads)
    import torch
    import torch.nn.functional as F

    from edge import training
    from edge.quantize import qat

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edge-qat-traj-"))
    model, calib, x, labels, ref = lite0_sample(work)
    x, ref = torch.from_numpy(x), torch.from_numpy(ref)
    ref_pred = ref.argmax(1).numpy()
    rows = []

    @torch.no_grad()
    def monitor(step, student):
        with qat.evaluating(student):
            y = torch.cat([student(x[i:i + 50]) for i in range(0, len(x), 50)])
        pred = y.argmax(1).numpy()
        kl = F.kl_div(F.log_softmax(y, 1), F.log_softmax(ref, 1), log_target=True, reduction="batchmean").item()
        rows.append({"step": step, "top1": round(100.0 * float((pred == labels).mean()), 2),
                     "agreement": round(float((pred == ref_pred).mean()), 4), "kl_vs_fp32": round(kl, 5)})
        print(rows[-1], flush=True)

    opts = {"range_init": None if args.range_init == "none" else args.range_init}
    if args.holdout is not None:
        opts["holdout"] = args.holdout
    r = qat.fine_tune(model, torch.zeros(1, 3, 224, 224), training.TrainSet({"input": calib}, None, "250 unlabelled photos", "input"),
                      epochs=args.epochs, lr=args.lr, monitor=monitor, **opts)
    held = (r.record.get("holdout") or {}).get("loss_by_step", {})
    for row in rows:
        row["held_out_loss"] = held.get(str(row["step"]))
    fp32 = round(100.0 * float((ref_pred == labels).mean()), 2)
    selected = (r.record.get("holdout") or {}).get("selected_step")
    lines = ["# QAT trajectory: EfficientNet-Lite0 fake-quant student at each checkpoint\n",
             f"{env['date']}, {env['machine']['processor']}, {args.threads} threads, edge {env['git_commit']}. "
             f"fp32 top-1 {fp32:.2f} on the 750 labelled photos. Recipe: {r.record['steps']} steps, lr {args.lr:g}, "
             f"range init {r.record['range_init']}; held-out {len((r.record.get('holdout') or {}).get('loss_by_step', {})) and r.record['holdout']['samples']} "
             f"of the 250 unlabelled photos; selected step {selected}.\n",
             "| step | held-out loss | top-1 (750) | agreement with fp32 | KL vs fp32 |", "|---|---|---|---|---|"]
    for row in rows:
        mark = " (selected)" if row["step"] == selected else ""
        lines.append(f"| {row['step']}{mark} | {row['held_out_loss']} | {row['top1']:.2f} | {row['agreement']:.4f} | "
                     f"{row['kl_vs_fp32']:.5f} |")
    save("qat_trajectory" + (f"-{args.tag}" if args.tag else ""),
         {"environment": env, "fp32_top1": fp32, "recipe": r.record, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
