"""Which channels to prune in EfficientNet-Lite0: every coupled group (the residual streams too),
or only the channels inside each block (the residual streams kept whole)? And does re-fitting the
layers that pruning cut the inputs of, by least squares against the unpruned network
(edge.pruning.reconstruct), recover what was lost?

Start: the 10-class Lite0 fine-tuned on imagenette/train (a `--finetune` build's folder, which holds
reference.pt). Each recipe prunes a copy in one step to at most 60% of the MACs, re-estimates batch
norm (or, with least squares, re-fits on 128-1024 training photos drawn at random instead, and
optionally trains the classifier again on the pruned features, edge.training.fit_head, as the
prune stage does when the classifier's inputs were cut), and is scored on the held-out tenth of
train/ that the prune and distill stages hold out (top-1 and KL divergence to the unpruned
network); then (--steps above 0) it recovers for --steps batches of 32 by
distillation (labels and the teacher's softmax) with the prune stage's recovery (batch statistics
at lr 5e-3 for a network that was not re-fitted, running statistics at lr 5e-4 with the gradient
norm clipped at 1 for one that was; edge.pruning.recovery) and is scored again. imagenette/eval
is not used: this chooses a recipe.

    python benchmarks/prune_recipe_lite0.py --reference out/ft/onnx [--steps 80 | 0] [--recipes NAME ...]

Rows of earlier runs (other recipes) are kept in the results file, each with its git commit.
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
from _common import RESULTS, SHARED, class_labels, environment, save  # noqa: E402

# name: (residual streams kept whole, least-squares samples (0: none), classifier re-fitted)
RECIPES = {"every group": (False, 0, False), "residual streams kept whole": (True, 0, False),
           "residual streams kept whole, least squares": (True, 128, False),
           "least squares on 512": (True, 512, False), "least squares on 1024": (True, 1024, False),
           "least squares on 128, classifier re-fitted": (True, 128, True),
           "least squares on 512, classifier re-fitted": (True, 512, True),
           "least squares on 1024, classifier re-fitted": (True, 1024, True)}


@torch.no_grad()
def score(student, teacher, val) -> dict:
    import torch.nn.functional as F

    correct, agree, kl, n = 0, 0, 0.0, 0
    student.eval()
    for i in range(0, len(val), 64):
        idx = np.arange(i, min(i + 64, len(val)))
        (x,) = val.batch(idx)
        s, t = student(x), teacher(x)
        correct += int((s.argmax(1).numpy() == val.labels[idx]).sum())
        agree += int((s.argmax(1) == t.argmax(1)).sum())
        kl += float(F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="sum"))
        n += len(idx)
    return {"top1": round(100 * correct / n, 2), "agreement": round(100 * agree / n, 2), "kl_to_teacher": round(kl / n, 4)}


def finetuned(reference: Path):
    """(spec, the fine-tuned network, train, held-out) from a --finetune build's target folder:
    imagenette/train in its class map, split as the prune and distill stages split it."""
    from edge import training
    from edge.verification import reference_model

    m = json.loads((reference / "manifest.json").read_text())
    spec, teacher = reference_model(m, folder=reference)
    data = training.training_set(str(SHARED / "imagenette" / "train"), None, spec)
    data = training.TrainSet(data.arrays, class_labels(m, data.labels), data.source, data.image)
    return (spec, teacher, *training.split(data, 0.1, np.random.default_rng(0)))


def main() -> None:
    from edge import pruning, training
    from edge.network import find_classifier, measure

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="a --finetune build's target folder")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--macs", type=float, default=0.6)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    a = ap.parse_args()
    env = environment(threads=torch.get_num_threads())
    old = RESULTS / "prune_recipe_lite0.json"
    kept = json.loads(old.read_text())["rows"] if old.is_file() else {}
    torch.manual_seed(0)
    spec, teacher, train, val = finetuned(a.reference)
    example = (torch.zeros(spec.inputs[0].shape),)
    full = measure(teacher, example)["macs"]
    rows = {**kept, "unpruned": {**score(teacher, teacher, val), "macs": full}}
    print("unpruned", rows["unpruned"], flush=True)
    for name in a.recipes:
        keep, lsq, head = RECIPES[name]
        t0 = time.perf_counter()
        student = copy.deepcopy(teacher)
        ratio = pruning.ratio_for_macs(student, example, int(a.macs * full), 10, keep_residual=keep)
        pruning.make_pruner(student, example, ratio, 1, 10, keep_residual=keep).step()
        if lsq:
            pick = np.sort(np.random.default_rng(2).permutation(len(train))[:lsq])  # not one class
            fit = [train.batch(pick[i:i + 16]) for i in range(0, lsq, 16)]
            done = pruning.reconstruct(student, teacher, fit)
            row = {"refitted": len(done)}
        else:
            training.reestimate_bn(student, train)
            row, done = {}, []
        if head:
            row["refit_only"] = score(student, teacher, val)
            name_fc = find_classifier(student, 10)[0]
            row["classifier"] = training.fit_head(student, name_fc, train, val, teacher=teacher)
        row.update({"ratio": ratio, **measure(student, example), "pruned": score(student, teacher, val),
                    "git_commit": env["git_commit"], "steps": a.steps})
        print(name, row, flush=True)
        row["seconds_to_refit"] = round(time.perf_counter() - t0, 1)
        if not a.steps:
            row["recovered"], row["seconds"] = row["pruned"], row["seconds_to_refit"]
            rows[name] = row
            print(name, row, flush=True)
            continue
        rng = np.random.default_rng(1)
        rec = pruning.recovery(done)
        row["recovery"] = {"lr": rec.lr, "clip": rec.clip, "batch_statistics": rec.batch_statistics}
        with rec.mode(student):
            r = training.distill(student, teacher, train, None, steps=a.steps, check_every=a.steps, lr=rec.lr,
                                 batch_size=32, rng=rng, clip=rec.clip, label=f"{name}: recover")
        if rec.batch_statistics:
            training.reestimate_bn(student, train)
        row["recovered"] = score(student, teacher, val)
        row["loss_last10"] = round(float(np.mean(r.losses[-10:])), 4)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows[name] = row
        print(name, row, flush=True)
    md = ["# Lite0 pruning: which channels (`benchmarks/prune_recipe_lite0.py`)", "",
          f"Fine-tuned 10-class Lite0 ({a.reference}); one-shot pruning to at most {a.macs:.0%} of its MACs, group "
          f"L2 importance, round_to {pruning.ROUND_TO}; scored on the held-out tenth of imagenette/train "
          f"({len(val)} photos); recovery: distillation (labels + teacher), batches of 32, with "
          "edge.pruning.recovery's recipe (batch statistics and lr 5e-3 without the re-fit; running statistics, lr "
          "5e-4, gradient norm clipped at 1 with it). 'pruned' columns: after the re-fits the recipe names, before any "
          f"training; 0 recovery steps: none. {env['machine']['processor']}, {env['machine']['cpu_count']} cores.", "",
          "| recipe | ratio per layer | MACs (M) | params (M) | top-1 before the classifier re-fit | top-1 pruned | agreement pruned | KL pruned | "
          "top-1 recovered | KL recovered | recovery steps | seconds | git |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
          f"| unpruned | - | {full / 1e6:.1f} | - | - | {rows['unpruned']['top1']} | 100 | 0 | - | - | - | - | - |"]
    for name in [n for n in RECIPES if n in rows]:
        r = rows[name]
        md.append(f"| {name} | {r['ratio']} | {r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.2f} | {r.get('refit_only', {}).get('top1', '-')} | {r['pruned']['top1']} | "
                  f"{r['pruned'].get('agreement', '-')} | {r['pruned']['kl_to_teacher']} | {r['recovered']['top1']} | {r['recovered']['kl_to_teacher']} | "
                  f"{r.get('steps', '-')} | {r['seconds']} | {r.get('git_commit', '')} |")
    save("prune_recipe_lite0", {"rows": rows, "steps": a.steps, "held_out": len(val), "environment": env},
         "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
