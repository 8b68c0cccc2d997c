"""Quantization-aware training (QAT) for the int8 targets.

The PTQ recipe of torch_ptq (per-channel symmetric qint8 weights with a scale floor, full-range
quint8 activations, ReLU6-aware observers, qnnpack patterns) is applied as fake quantization
with FX `prepare_qat_fx`, which also simulates conv+BN folding (the weights are fake-quantized as
they will be folded). The network is then fine-tuned briefly:

* labelled data (`--train DIR`): cross-entropy on the labels plus the distillation term below;
* otherwise distillation on the calibration images: KL divergence from the fp32 model's
  softmax (the teacher) to the fake-quantized student's, so no labels are needed.

Light augmentation (a random crop of 80-100% of the side, resized back, and a random horizontal
flip) stretches a few hundred images over several epochs. SGD with momentum and a cosine decay;
dropout is off (the student should match the teacher's eval-mode outputs). After 2/3 of the
steps the observers stop moving the ranges, so the last third trains the weights against fixed
quantization grids. Batch norm runs on its running statistics throughout (frozen from step 0,
see FREEZE_BN_AT for the measurement), so the folding the int8 model will have is what trains.

The result reaches the targets as (1) the trained fake-quant model, which `convert_fx` turns into
the int8 .ptl with the learned ranges, and (2) the fine-tuned float network with BN folded in,
which the ONNX and TFLite exporters quantize with their own calibration on the same samples.
"""
from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.errors import ConversionError, UserError

log = logging.getLogger("edge")

DEFAULT_EPOCHS = 10
# EfficientNet-Lite0, distillation on 250 photos, 128 steps (benchmarks/qat_int8.py): lr 1e-4 took
# the loss from 0.023 to 0.011, lr 1e-3 only from 0.030 to 0.026, and lr 1e-4 gave the higher output
# cosine to fp32 on all three targets (.ptl 0.9951 vs 0.9902). (16 steps on 64 photos had favoured
# 1e-3 over ranges alone; lr 1e-2 diverged.)
DEFAULT_LR = 1e-4
BATCH_SIZE = 16
MOMENTUM = 0.9
FREEZE_AT = 2 / 3  # fraction of the steps after which the observers are frozen
# Fraction of the steps after which batch norm stops using and updating batch statistics. 0: from
# the start. Measured on EfficientNet-Lite0 (real weights, 16 photos): batch statistics alone put
# its output at a KL divergence of 2.55 from the eval-mode output, all of int8 fake quantization
# at 0.014; with batch statistics, a short fine-tune on a few hundred images chases BN noise.
FREEZE_BN_AT = 0.0
CROP_SCALE = (0.8, 1.0)  # random crop side, as a fraction of the input side


@dataclass(frozen=True)
class TrainSet:
    """Preprocessed training samples, with labels when they are labelled."""

    x: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray | None
    source: str


@dataclass
class QATResult:
    prepared: nn.Module  # the trained fake-quant model (FX-prepared, eval mode, observers frozen)
    float_model: nn.Module  # the fine-tuned float network, BN folded, no fake quantization (an FX GraphModule)
    ranges: dict  # float_model node name -> (lo, hi, clamp or None): the learned range of that node's output
    record: dict  # the recipe and its figures, for the manifest


def training_set(train: str | None, calib, pre, num_classes: int | None) -> TrainSet:
    """`--train DIR` (labelled: ImageFolder or labels.csv), else the calibration samples."""
    from edge.data import load_images, load_labelled

    if train is None:
        return TrainSet(np.asarray(calib.x, np.float32), None, f"calibration set ({calib.source}), unlabelled")
    ds = load_labelled(train, what="--train folder")
    labels = np.asarray(ds.labels, np.int64)
    if num_classes and labels.max() >= num_classes:
        raise UserError(f"--train {train} has class index {labels.max()}, but the model has {num_classes} classes")
    return TrainSet(load_images(ds.paths, pre), labels, f"{train} (labelled, {len(labels)} images)")


def fine_tune(model: nn.Module, example: torch.Tensor, data: TrainSet, *, epochs: int = DEFAULT_EPOCHS,
              lr: float = DEFAULT_LR, max_steps: int | None = None, batch_size: int = BATCH_SIZE,
              seed: int = 0, per_channel: bool = True) -> QATResult:
    """Quantization-aware fine-tuning of a copy of `model` (fp32, eval mode; left unchanged).
    per_channel=False (per-tensor weights) is for measurements; the targets use per-channel."""
    from torch.ao.quantization import disable_observer

    from edge.quantize.torch_ptq import prepare, qat_qconfig

    if len(data.x) == 0:
        raise UserError(f"no training samples in {data.source}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    student, clamped = prepare(model, example, qat_qconfig(per_channel), qat=True)
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    per_epoch = math.ceil(len(data.x) / batch_size)
    steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    plan = {"steps": steps, "freeze_step": max(1, round(steps * FREEZE_AT)),
            "bn_stats_freeze_step": round(steps * FREEZE_BN_AT)}
    losses = _train(student, copy.deepcopy(model).eval(), data, plan, lr, batch_size, np.random.default_rng(seed))
    student.apply(disable_observer)  # a FakeQuantize observes in eval mode too: keep the learned ranges
    student.eval()
    window = max(1, min(per_epoch, steps // 4))
    record = {
        "data": data.source, "samples": int(len(data.x)),
        "objective": ("cross-entropy on the labels + " if data.labels is not None else "")
        + "KL divergence to the fp32 model's softmax (distillation)",
        "augmentation": f"random crop {CROP_SCALE[0]:.0%}-{CROP_SCALE[1]:.0%} of the side, resized back; "
                        "random horizontal flip",
        **plan, "epochs": round(steps / per_epoch, 2), "batch_size": batch_size, "lr": lr,
        "optimizer": f"SGD momentum {MOMENTUM}, cosine decay to 0",
        "loss_start": float(f"{np.mean(losses[:window]):.4g}"), "loss_end": float(f"{np.mean(losses[-window:]):.4g}"),
        "relu6_clamped_observers": clamped, "per_channel_weights": per_channel, "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("qat: %d steps, loss %.4g -> %.4g (%.0f s)", steps, record["loss_start"], record["loss_end"],
             record["seconds"])
    return QATResult(student, *float_model(student), record)


def _train(student: nn.Module, teacher: nn.Module, data: TrainSet, plan: dict, lr: float, batch_size: int,
           rng) -> list[float]:
    """The training loop; returns the loss of every step."""
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import disable_observer

    from edge.quantize.torch_ptq import _quiet_deprecations

    steps = plan["steps"]
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=lr, momentum=MOMENTUM)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses, bar = [], _Progress(steps)
    with _quiet_deprecations():
        for step, idx in enumerate(_batches(len(data.x), batch_size, steps, rng)):
            if step == plan["freeze_step"]:
                student.apply(disable_observer)
            if step == plan["bn_stats_freeze_step"]:
                student.apply(nniqat.freeze_bn_stats)
            x = _augment(torch.from_numpy(data.x[idx]), rng)
            with torch.no_grad():
                target = teacher(x)
            loss = _loss(student(x), target, None if data.labels is None else torch.from_numpy(data.labels[idx]))
            if not torch.isfinite(loss):
                bar.close()
                raise ConversionError(f"QAT diverged at step {step + 1} of {steps} (loss {loss.item()}); "
                                      f"lower --lr (it was {lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(step + 1, losses[-1])
    bar.close()
    return losses


def _batches(n: int, batch_size: int, steps: int, rng):
    """Indices of `steps` batches, epoch after epoch, each epoch a fresh permutation."""
    done = 0
    while True:
        perm = rng.permutation(n)
        for i in range(0, n, batch_size):
            if done == steps:
                return
            yield np.sort(perm[i:i + batch_size])
            done += 1


def _augment(x: torch.Tensor, rng) -> torch.Tensor:
    """Per sample: a random square crop of CROP_SCALE of the side, resized back, and a random flip."""
    h, w = x.shape[2:]
    out = []
    for sample in x:
        s = int(round(min(h, w) * rng.uniform(*CROP_SCALE)))
        top, left = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = sample[None, :, top:top + s, left:left + s]
        if s != h or s != w:
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out.append(crop.flip(3) if rng.random() < 0.5 else crop)
    return torch.cat(out)


def _loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    kd = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
    return kd if labels is None else kd + F.cross_entropy(student, labels)


def float_model(prepared: nn.Module) -> tuple[nn.Module, dict]:
    """The fine-tuned network of a QAT model in float: each QAT conv/linear becomes a plain float
    module with its BN folded in and its weights on their trained int8 levels (the [-127, 127]
    per-channel grid that ONNX and TFLite quantize to as well, so their weights are the trained
    ones exactly); activation fake quantization is removed. Also returns, per node whose output
    was fake-quantized, its learned range (lo, hi) and the clamp its observer applied (or None)."""
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    gm = copy.deepcopy(prepared).eval()
    ranges = {}
    modules = dict(gm.named_modules(remove_duplicate=False))  # FX shares one observer along pad chains
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if isinstance(m, FakeQuantizeBase):
            ranges.setdefault(node.args[0].name, _range(m))
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif hasattr(m, "weight_fake_quant") and hasattr(m, "to_float"):
            parent, _, name = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, name, _on_grid(m))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), ranges


def _range(fq) -> tuple[float, float, tuple[float, float] | None]:
    from edge.quantize.torch_ptq import _clamp_aware

    scale, zp = float(fq.scale.reshape(-1)[0]), int(fq.zero_point.reshape(-1)[0])
    observer = _clamp_aware(fq)
    return (fq.quant_min - zp) * scale, (fq.quant_max - zp) * scale, observer.clamp if observer else None


@torch.no_grad()
def learned_ranges(result: QATResult, x0: np.ndarray) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """The learned activation ranges, each with the values its tensor takes in the fine-tuned float
    network on the one sample x0 (C, H, W): what ONNX quantization matches its tensors by. Where the
    observer recorded clamped values (a ReLU6 follows), the clamped values are given."""
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in result.ranges and isinstance(out, torch.Tensor):
                values[n.name] = out.detach().float().numpy()
            return out

    Recorder(result.float_model).run(torch.from_numpy(np.ascontiguousarray(x0[None], np.float32)))
    known = []
    for name, (lo, hi, clamp) in result.ranges.items():
        if name in values:
            v = values[name] if clamp is None else np.clip(values[name], *clamp)
            known.append((v, (lo, hi)))
    return known


@torch.no_grad()
def _on_grid(qat_module: nn.Module) -> nn.Module:
    """qat_module.to_float() (BN folded), its weight replaced by the fake-quantized weight."""
    flt = qat_module.to_float().eval()
    lin = flt[0] if isinstance(flt, nn.Sequential) else flt  # Conv/Linear + ReLU come as a Sequential
    lin.weight.copy_(qat_module.weight_fake_quant(lin.weight))
    return flt


def to_lite(prepared: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, dict]:
    """The trained fake-quant model as a traced int8 qnnpack module, with its learned ranges."""
    from edge.quantize import torch_ptq

    start = time.perf_counter()
    traced, info = torch_ptq.to_lite(prepared, example)
    return traced, {
        "engine": torch_ptq.ENGINE, "method": "qat", "per_channel": True,
        "qconfig": {
            "activation": "quint8 per-tensor affine, full 0..255 range, ranges learned in QAT "
                          "(moving-average min/max, frozen late)",
            "weight": "qint8 per-channel symmetric [-127, 127], scale >= 2**-12, trained in QAT",
            "bn_folded": True, **info["fixes"],
        },
        "quantized_ops": info["ops"], "seconds": round(time.perf_counter() - start, 1),
    }


class _Progress:
    """A one-line progress bar with the loss on stderr (only when the edge log shows INFO)."""

    def __init__(self, total: int, width: int = 24):
        self.total, self.width, self.start = total, width, time.perf_counter()
        self.on = log.isEnabledFor(logging.INFO)

    def update(self, done: int, loss: float) -> None:
        if not self.on:
            return
        fill = self.width * done // self.total
        rate = (time.perf_counter() - self.start) / done
        sys.stderr.write(f"\redge: qat [{'#' * fill}{'.' * (self.width - fill)}] {done}/{self.total} "
                         f"loss {loss:.4g} {rate:.2f} s/step")
        sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\n")
            self.on = False
