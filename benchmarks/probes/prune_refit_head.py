"""Probe (as run on 2026-12-04; kept as it was run but for the import path; its inputs are in /tmp): prune the fine-tuned Lite0 (/tmp/ft/onnx) to 0.6x MACs, re-fit on N photos,
score, re-fit the classifier, score; saves the network for prune_recovery_lr.py.
    python benchmarks/probes/prune_refit_head.py N
Output: benchmarks/results/prune_recovery_probes.txt. Not a maintained benchmark: the figures it
produced are quoted in edge/pruning.py's comments and the closing note, marked as probes."""
import copy, json, sys, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prune_recipe_lite0 import score
from _common import SHARED
from edge import pruning, training
from edge.network import measure
from edge.verification import reference_model
from edge.training import fit_head
ref = Path("/tmp/ft/onnx")
torch.manual_seed(0)
m = json.loads((ref / "manifest.json").read_text())
spec, teacher = reference_model(m, folder=ref)
cmap = {int(k): v for k, v in next(s for s in m["stages"] if s["stage"] == "finetune")["class_map"].items()}
data = training.training_set(str(SHARED / "imagenette" / "train"), None, spec)
data = training.TrainSet(data.arrays, np.array([cmap[int(v)] for v in data.labels]), data.source, data.image)
train, val = training.split(data, 0.1, np.random.default_rng(0))
example = (torch.zeros(spec.inputs[0].shape),)
full = measure(teacher, example)["macs"]
t0 = time.time()
student = copy.deepcopy(teacher)
if len(sys.argv) > 2:
    student = torch.load(sys.argv[2], weights_only=False)
if len(sys.argv) <= 2:
  ratio = pruning.ratio_for_macs(student, example, int(0.6 * full), 10, keep_residual=True)
  pruning.make_pruner(student, example, ratio, 1, 10, keep_residual=True).step()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 128
pick = np.sort(np.random.default_rng(2).permutation(len(train))[:n])
fit = [train.batch(pick[i:i + 16]) for i in range(0, n, 16)]
if len(sys.argv) <= 2:
  print("refitted", len(pruning.reconstruct(student, teacher, fit)), "samples", n, time.time() - t0, flush=True)
print("pruned+refit", score(student, teacher, val), time.time() - t0, flush=True)
torch.save(student, "/tmp/probe/refit%d.pt" % n)
r = fit_head(student, "_fc", train, val)
print("head refit", r, score(student, teacher, val), time.time() - t0, flush=True)
torch.save(student, "/tmp/probe/refit%d_head.pt" % n)
