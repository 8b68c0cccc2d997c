"""Where should pruning cut the fine-tuned EfficientNet-Lite0? edge's sensitivity allocation
(`--prune-macs M`, the default `--prune-allocation sensitivity`) against the same ratio for every
group (`--prune-allocation uniform`), before any training.

1. Scan (edge.stages.prune._allocate): each prunable channel group (with the residual streams kept
   whole: the expanded channels inside each block, and the head convolution's outputs) is pruned
   alone at each of edge.pruning.SCAN_RATIOS, re-fitted by least squares on SCAN_SAMPLES training
   photos drawn at random (the classifier trained again when its inputs were cut), and scored on
   as many held-out photos: the distillation loss (KL) to the unpruned network and the MACs saved.
2. Allocation (edge.pruning.allocate): the per-group ratios with the least summed loss that meet
   the MACs target (the losses are assumed to add up; step 3 checks the result, not the sum).
3. Check: the allocated network and the uniform one, each pruned in one step, re-fitted on 1,024
   photos with the classifier re-fitted (as the prune stage does), scored on the 547 held-out photos.

The held-out tenth of imagenette/train is the one edge's prune and distill stages hold out; eval/
is not used: this chooses a recipe.

    python benchmarks/prune_sensitivity_lite0.py --reference <a --finetune build>/onnx
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save  # noqa: E402
from prune_recipe_lite0 import finetuned, score  # noqa: E402

CLASSES = 10


def refit(student, teacher, train, val, n: int):
    """As the prune stage does: least squares on n photos drawn at random, then the classifier."""
    from edge import pruning
    from edge.stages.prune import _refit_classifier, reconstruction_sample

    pick = reconstruction_sample(len(train), n, np.random.default_rng(2))
    pruning.reconstruct(student, teacher, [train.batch(pick[i:i + 16]) for i in range(0, n, 16)])
    return _refit_classifier(student, teacher, CLASSES, train, val)


def main() -> None:
    from edge import pruning
    from edge.network import measure
    from edge.stages.prune import _allocate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--macs", type=float, default=0.6)
    a = ap.parse_args()
    env = environment(threads=torch.get_num_threads())
    torch.manual_seed(0)
    spec, teacher, train, val = finetuned(a.reference)
    example = (torch.zeros(spec.inputs[0].shape),)
    full = measure(teacher, example)["macs"]
    teacher.eval()
    target = int(a.macs * full)
    allocation = _allocate(teacher, example, CLASSES, ["classification"], train, val, full - target,
                           np.random.default_rng(0))
    choice = allocation["ratios"]
    print("allocation", choice, allocation["seconds"], "s", flush=True)
    uniform_ratio = pruning.ratio_for_macs(teacher, example, target, CLASSES)
    results = {}
    for label, ratios in (("allocated", choice), ("uniform", None)):
        t1 = time.perf_counter()
        student = copy.deepcopy(teacher)
        pruning.make_pruner(student, example, uniform_ratio, 1, CLASSES, ratios=ratios).step()
        macs = measure(student, example)
        head = refit(student, teacher, train, val, 1024)
        results[label] = {**score(student, teacher, val), **macs, "macs_fraction": round(macs["macs"] / full, 4),
                          "head": head, "seconds": round(time.perf_counter() - t1, 1)}
        print(label, results[label], flush=True)
    results["uniform"]["ratio"] = uniform_ratio
    results["allocated"]["ratios"] = choice
    md = ["# Lite0 pruning: a per-group sensitivity scan and the allocation it implies "
          "(`benchmarks/prune_sensitivity_lite0.py`)", "",
          f"Fine-tuned 10-class Lite0 ({a.reference}), {full / 1e6:.1f} M MACs; target {a.macs:.0%}. Scan: each group "
          f"alone at {allocation['scan_ratios']}, re-fitted on {allocation['scan_samples']} photos, KL to the unpruned "
          f"network on as many held-out photos ({allocation['seconds']:.0f} s). Check: one step, re-fit on 1,024 photos, "
          f"classifier re-fitted, on {len(val)} held-out photos. {env['machine']['processor']}, "
          f"{env['machine']['cpu_count']} cores; git {env['git_commit']}.", "",
          "| network | MACs (fraction) | top-1 | agreement | KL to unpruned |", "|---|---|---|---|---|"]
    for label, r in results.items():
        md.append(f"| {label} | {r['macs_fraction']} | {r['top1']} | {r['agreement']} | {r['kl_to_teacher']} |")
    ratios = allocation["scan_ratios"]
    md += ["", "Allocated ratios: " + ", ".join(f"{g} {r:g}" for g, r in choice.items() if r), "",
           "| group | " + " | ".join(f"KL, MACs saved (M) at {r:g}" for r in ratios) + " |",
           "|---|" + "---|" * len(ratios)]
    for g, rows in allocation["scan"].items():
        md.append(f"| {g} | " + " | ".join(f"{rows[f'{r:g}']['loss']:.4f}, {rows[f'{r:g}']['macs_saved'] / 1e6:.1f}"
                                           for r in ratios) + " |")
    save("prune_sensitivity_lite0", {"allocation": allocation, "results": results, "environment": env},
         "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
