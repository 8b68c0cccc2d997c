"""Probe: does training the pruned Lite0 work once batch norm is folded into the convolutions
(the BN left as identity plus shift, so the function is unchanged but SGD moves the effective
weights, not ones that a small running variance amplifies)?
    python benchmarks/probes/prune_fold_bn.py <pruned build>/onnx STEPS LR OPT FOLD
Prints held-out loss/top-1 (the prune stage's held-out tenth) every STEPS//4 steps."""
import json, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn as nn
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prune_recipe_lite0 import score
from _common import SHARED
from edge import training
from edge.verification import reference_model

ref, steps, lr, opt, fold = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
torch.manual_seed(0)
m = json.loads((ref / "manifest.json").read_text())
spec, student = reference_model(m, folder=ref)
teacher_ref = Path(str(ref).replace("pruned-0.60", "finetuned"))
_, teacher = reference_model(json.loads((teacher_ref / "manifest.json").read_text()), folder=teacher_ref)
cmap = {int(k): v for k, v in next(s for s in m["stages"] if s["stage"] == "finetune")["class_map"].items()}
data = training.training_set(str(SHARED / "imagenette" / "train"), None, spec)
data = training.TrainSet(data.arrays, np.array([cmap[int(v)] for v in data.labels]), data.source, data.image)
train, val = training.split(data, 0.1, np.random.default_rng(0))
student.eval(); teacher.eval()
print("start", score(student, teacher, val), flush=True)


@torch.no_grad()
def fold_bn(model):
    """Each conv followed by its BN (in module order) gets the BN's scale; the BN becomes shift only."""
    n = 0
    convs = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]
    bns = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)]
    for (cn, c), (bn_name, b) in zip(convs, bns):
        assert c.out_channels == b.num_features, (cn, bn_name)
        s = b.weight / torch.sqrt(b.running_var + b.eps)
        c.weight.mul_(s.view(-1, 1, 1, 1))
        shift = b.bias - b.running_mean * s + (c.bias * s if c.bias is not None else 0)
        if c.bias is not None:
            c.bias.zero_()
        b.running_mean.zero_(); b.running_var.fill_(1 - b.eps); b.weight.fill_(1.0); b.bias.copy_(shift)
        b.weight.requires_grad_(False)
        n += 1
    return n


if fold:
    print("folded", fold_bn(student), score(student, teacher, val), flush=True)
t0 = time.time()
r = training.distill(student, teacher, train, val, steps=steps, check_every=max(1, steps // 4), lr=lr, batch_size=32,
                     rng=np.random.default_rng(1), clip=1.0, optimizer=opt, label="probe",
                     monitor=lambda s, st: print(s, round(time.time() - t0), score(st, teacher, val), flush=True))
print("held-out loss", r.checks, flush=True)
