"""Probe (as run on 2026-12-04; kept as it was run but for the import path; its inputs are in /tmp): train a saved re-fitted network with one recovery recipe and
score it on the 547 held-out photos.
    python benchmarks/probes/prune_recovery_lr.py SAVED.pt LR STEPS fix|nofix CLIP|none sgd|adamw [hints]
Output: benchmarks/results/prune_recovery_probes.txt. Not a maintained benchmark: the figures it
produced are quoted in edge/pruning.py's comments and the closing note, marked as probes."""
import copy, json, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn as nn
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prune_recipe_lite0 import score
from _common import SHARED
from edge import pruning, training
from edge.verification import reference_model
ref = Path("/tmp/ft/onnx")
torch.manual_seed(0)
m = json.loads((ref / "manifest.json").read_text())
spec, teacher = reference_model(m, folder=ref)
cmap = {int(k): v for k, v in next(s for s in m["stages"] if s["stage"] == "finetune")["class_map"].items()}
data = training.training_set(str(SHARED / "imagenette" / "train"), None, spec)
data = training.TrainSet(data.arrays, np.array([cmap[int(v)] for v in data.labels]), data.source, data.image)
train, val = training.split(data, 0.1, np.random.default_rng(0))
src, lr, steps, fix, clip = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "fix", (float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "none" else None)
student = torch.load(src, weights_only=False)
if fix:
    n = 0
    for mod in student.modules():
        if isinstance(mod, nn.BatchNorm2d):
            d = mod.running_var < 1e-10
            with torch.no_grad():
                mod.weight[d] = 0
            n += int(d.sum())
    print("dead channels frozen", n, score(student, teacher, val), flush=True)
t0 = time.time()
student.eval()
hints = []
if "hints" in sys.argv:
    tm = dict(teacher.named_modules())
    for n, mod in student.named_modules():
        if isinstance(mod, nn.Conv2d) and n in tm and mod.in_channels < tm[n].in_channels and mod.out_channels == tm[n].out_channels:
            hints.append((mod, tm[n]))
    print("hints", len(hints), flush=True)
r = training.distill(student, teacher, train, None, steps=steps, check_every=steps, lr=lr, batch_size=32, rng=np.random.default_rng(1), clip=clip, label="probe", optimizer=sys.argv[6] if len(sys.argv) > 6 else "sgd", hints=hints)
print("losses first/last10", np.mean(r.losses[:10]), np.mean(r.losses[-10:]), "max", max(r.losses), flush=True)
print(src, lr, steps, fix, clip, sys.argv[6:], score(student, teacher, val), time.time() - t0, flush=True)
