"""Where should pruning cut the fine-tuned EfficientNet-Lite0? A per-group sensitivity scan and the
allocation it implies, against edge's uniform ratio (every prunable group loses the same share).

1. Scan: each prunable channel group (with the residual streams kept whole: the expanded channels
   inside each block, and the head convolution's outputs) is pruned alone at each --ratios value,
   the layer that reads it re-fitted by least squares on --fit photos (the classifier, for the head
   group, trained again on cached features of --fit photos), and scored on --score held-out photos:
   the KL divergence to the unpruned network and the MACs it saved.
2. Allocation: per group the ratio (0 or a scanned one) that minimises the sum of the scanned KL
   increases under the MACs target (--macs of the unpruned network), by dynamic programming over
   the MACs saved (the increases are assumed to add up; step 3 checks the result, not the sum).
3. Check: the allocated network and the uniform one, each pruned in one step, re-fitted on 1,024
   photos with the classifier re-fitted (edge's prune stage), scored on the 547 held-out photos.

The held-out tenth of imagenette/train is the one edge's prune and distill stages hold out; eval/
is not used: this chooses a recipe.

    python benchmarks/prune_sensitivity_lite0.py --reference <a --finetune build>/onnx
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import SHARED, environment, save  # noqa: E402
from prune_recipe_lite0 import score  # noqa: E402

CLASSES = 10


def groups(model, example) -> list[str]:
    """The dense layer that writes each prunable group (the others are kept whole by edge's plan)."""
    from edge import pruning

    ignored = set(pruning._ignored(model, example, CLASSES, True))
    names = {m: n for n, m in model.named_modules()}
    out = []
    for writers, _, _ in pruning._channel_groups(model, example):
        if writers and not (writers & ignored):
            out.append(names[next(iter(writers))])
    return out


def prune(model, example, ratios: dict[str, float]):
    """Prune `model` in place in one step: each named group's writer at its ratio, nothing else."""
    from edge import pruning

    tp = pruning._tp()
    ignored = pruning._ignored(model, example, CLASSES, True)
    return tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=0.0, ignored_layers=ignored, round_to=pruning.ROUND_TO,
                                pruning_ratio_dict={model.get_submodule(n): r for n, r in ratios.items() if r}
                                ).step()


def refit(student, teacher, train, n: int, head_fit: bool, val):
    from edge import pruning, training
    from edge.network import find_classifier

    pick = np.sort(np.random.default_rng(2).permutation(len(train))[:n])
    done = pruning.reconstruct(student, teacher, [train.batch(pick[i:i + 16]) for i in range(0, n, 16)])
    head = None
    if head_fit:
        head = training.fit_head(student, find_classifier(student, CLASSES)[0], train.take(pick), val)
    return done, head


def _feeds_classifier(model, name: str) -> bool:
    from edge.network import find_classifier

    layer = model.get_submodule(name)
    fc = find_classifier(model, CLASSES)[1]
    return getattr(layer, "out_channels", None) == fc.in_features


def allocate(scan: dict, saved_needed: int, unit: int = 250_000) -> dict[str, float]:
    """Per group the ratio minimising the summed KL increase with at least `saved_needed` MACs saved."""
    best = {0: (0.0, {})}  # MACs saved (in units) -> (KL increase, choice)
    for g, rows in scan.items():
        nxt: dict[int, tuple] = {}
        for s, (kl, choice) in best.items():
            for r, row in [(0.0, {"saved": 0, "dkl": 0.0})] + list(rows.items()):
                key = s + row["saved"] // unit
                value = (kl + max(row["dkl"], 0.0), {**choice, g: float(r)})
                if key not in nxt or value[0] < nxt[key][0]:
                    nxt[key] = value
        best = nxt
    ok = [v for k, v in best.items() if k * unit >= saved_needed]
    if not ok:
        raise SystemExit("no allocation of the scanned ratios reaches the MACs target")
    return min(ok, key=lambda v: v[0])[1]


def main() -> None:
    from edge import pruning, training
    from edge.network import measure
    from edge.verification import reference_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--macs", type=float, default=0.6)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--fit", type=int, default=256)
    ap.add_argument("--score", type=int, default=256)
    a = ap.parse_args()
    env = environment(threads=torch.get_num_threads())
    torch.manual_seed(0)
    m = json.loads((a.reference / "manifest.json").read_text())
    spec, teacher = reference_model(m, folder=a.reference)
    cmap = {int(k): v for k, v in next(s for s in m["stages"] if s["stage"] == "finetune")["class_map"].items()}
    data = training.training_set(str(SHARED / "imagenette" / "train"), None, spec)
    data = training.TrainSet(data.arrays, np.array([cmap[int(v)] for v in data.labels]), data.source, data.image)
    train, val = training.split(data, 0.1, np.random.default_rng(0))
    small = val.take(np.arange(min(a.score, len(val))))
    example = (torch.zeros(spec.inputs[0].shape),)
    full = measure(teacher, example)["macs"]
    teacher.eval()
    names = groups(teacher, example)
    print(f"{len(names)} prunable groups: {names}", flush=True)
    t0 = time.perf_counter()
    scan: dict[str, dict] = {}
    for g in names:
        scan[g] = {}
        for r in a.ratios:
            student = copy.deepcopy(teacher)
            prune(student, example, {g: r})
            # the head convolution's reader is the classifier: too many weights for a few photos'
            # least squares; trained again on 1,024 photos' features, as the prune stage does
            head = _feeds_classifier(student, g)
            refit(student, teacher, train, 1024 if head else a.fit, head_fit=head, val=small)
            row = score(student, teacher, small)
            row["saved"] = full - measure(student, example)["macs"]
            scan[g][r] = row
            print(f"{time.perf_counter() - t0:6.0f}s {g} {r}: {row}", flush=True)
    base = score(teacher, teacher, small)
    for g in scan:
        for r in scan[g]:
            scan[g][r]["dkl"] = scan[g][r]["kl_to_teacher"] - base["kl_to_teacher"]
    target = int(a.macs * full)
    choice = allocate(scan, full - target)
    print("allocation", choice, flush=True)
    uniform_ratio = pruning.ratio_for_macs(teacher, example, target, CLASSES)
    results = {}
    for label, ratios in (("allocated", choice), ("uniform", None)):
        t1 = time.perf_counter()
        student = copy.deepcopy(teacher)
        if ratios is None:
            pruning.make_pruner(student, example, uniform_ratio, 1, CLASSES).step()
        else:
            prune(student, example, ratios)
        macs = measure(student, example)
        _, head = refit(student, teacher, train, 1024, head_fit=True, val=val)
        results[label] = {**score(student, teacher, val), **macs, "macs_fraction": round(macs["macs"] / full, 4),
                          "head": head, "seconds": round(time.perf_counter() - t1, 1)}
        print(label, results[label], flush=True)
    results["uniform"]["ratio"] = uniform_ratio
    results["allocated"]["ratios"] = choice
    md = ["# Lite0 pruning: a per-group sensitivity scan and the allocation it implies "
          "(`benchmarks/prune_sensitivity_lite0.py`)", "",
          f"Fine-tuned 10-class Lite0 ({a.reference}), {full / 1e6:.1f} M MACs; target {a.macs:.0%}. Scan: each group "
          f"alone at {a.ratios}, re-fitted on {a.fit} photos, KL to the unpruned network on {len(small)} held-out "
          f"photos. Check: one step, re-fit on 1,024 photos, classifier re-fitted, on {len(val)} held-out photos. "
          f"{env['machine']['processor']}, {env['machine']['cpu_count']} cores; git {env['git_commit']}.", "",
          "| network | MACs (fraction) | top-1 | agreement | KL to unpruned |", "|---|---|---|---|---|"]
    for label, r in results.items():
        md.append(f"| {label} | {r['macs_fraction']} | {r['top1']} | {r['agreement']} | {r['kl_to_teacher']} |")
    md += ["", "Allocated ratios: " + ", ".join(f"{g} {r:g}" for g, r in choice.items() if r), "",
           "| group | " + " | ".join(f"KL +, MACs saved (M) at {r:g}" for r in a.ratios) + " |",
           "|---|" + "---|" * len(a.ratios)]
    for g, rows in scan.items():
        md.append(f"| {g} | " + " | ".join(f"{rows[r]['dkl']:+.4f}, {rows[r]['saved'] / 1e6:.1f}" for r in a.ratios)
                  + " |")
    save("prune_sensitivity_lite0", {"scan": {g: {str(r): v for r, v in rows.items()} for g, rows in scan.items()},
                                     "results": results, "environment": env}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
