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
from contextlib import contextmanager
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
# The activation ranges training starts from: PTQ's own observer on the training samples (what
# quantize_torch calibrates with), not a moving average of the first batches' min/max.
RANGE_INIT = "histogram"
# Fraction of the samples held out to pick the checkpoint: the step (0 included: the PTQ starting
# point) whose loss on them is lowest. Few hundred images overfit; the held-out loss says when.
HOLDOUT = 0.2
MIN_HOLDOUT = 4


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
              seed: int = 0, per_channel: bool = True, range_init: str | None = RANGE_INIT,
              holdout: float = HOLDOUT, monitor=None) -> QATResult:
    """Quantization-aware fine-tuning of a copy of `model` (fp32, eval mode; left unchanged).
    per_channel=False (per-tensor weights) is for measurements; the targets use per-channel.
    range_init: the PTQ observer that sets the activation ranges before training (None: the
    moving-average min/max of the first batches). holdout: the fraction of samples held out to pick
    the checkpoint (0: keep the last step). monitor(step, student) is called at every checkpoint
    (diagnostics: benchmarks/qat_trajectory.py)."""
    from torch.ao.quantization import disable_observer

    from edge.quantize.torch_ptq import prepare, qat_qconfig

    if len(data.x) == 0:
        raise UserError(f"no training samples in {data.source}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, val = _split(data, holdout, rng)
    student, clamped = prepare(model, example, qat_qconfig(per_channel), qat=True)
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    if range_init:
        calibrate_ranges(student, train.x, range_init, batch_size)
    per_epoch = math.ceil(len(train.x) / batch_size)
    steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    plan = {"steps": steps, "freeze_step": max(1, round(steps * FREEZE_AT)),
            "bn_stats_freeze_step": round(steps * FREEZE_BN_AT), "check_every": per_epoch}
    teacher = copy.deepcopy(model).eval()
    losses, checks, best = _train(student, teacher, train, val, plan, lr, batch_size, rng, range_init, monitor)
    if best is not None:
        student.load_state_dict(best[1])
    student.apply(disable_observer)  # a FakeQuantize observes in eval mode too: keep the learned ranges
    student.eval()
    window = max(1, min(per_epoch, steps // 4))
    record = {
        "data": data.source, "samples": int(len(data.x)), "trained_on": int(len(train.x)),
        "objective": ("cross-entropy on the labels + " if data.labels is not None else "")
        + "KL divergence to the fp32 model's softmax (distillation)",
        "augmentation": f"random crop {CROP_SCALE[0]:.0%}-{CROP_SCALE[1]:.0%} of the side, resized back; "
                        "random horizontal flip",
        "range_init": (f"{range_init} observer on the training samples (PTQ's), activation observers off until "
                       "the freeze step, then re-estimated the same way and frozen") if range_init
        else "moving-average min/max, frozen at the freeze step",
        **plan, "epochs": round(steps / per_epoch, 2), "batch_size": batch_size, "lr": lr,
        "optimizer": f"SGD momentum {MOMENTUM}, cosine decay to 0",
        "loss_start": float(f"{np.mean(losses[:window]):.4g}"), "loss_end": float(f"{np.mean(losses[-window:]):.4g}"),
        "holdout": {"samples": int(len(val.x)), "loss_by_step": checks,
                    "selected_step": best[0] if best else steps} if val is not None else None,
        "relu6_clamped_observers": clamped, "per_channel_weights": per_channel, "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("qat: %d steps, loss %.4g -> %.4g%s (%.0f s)", steps, record["loss_start"], record["loss_end"],
             f", kept step {best[0]} (held-out loss {checks[str(best[0])]:.4g})" if best else "", record["seconds"])
    return QATResult(student, *float_model(student), record)


def _split(data: TrainSet, holdout: float, rng) -> tuple[TrainSet, TrainSet | None]:
    """Hold out a random `holdout` fraction of the samples to pick the checkpoint with."""
    n_val = int(round(len(data.x) * holdout))
    if holdout <= 0 or n_val < MIN_HOLDOUT or len(data.x) - n_val < MIN_HOLDOUT:
        return data, None
    perm = rng.permutation(len(data.x))
    take = lambda idx: TrainSet(data.x[np.sort(idx)], None if data.labels is None else data.labels[np.sort(idx)],
                                data.source)
    return take(perm[n_val:]), take(perm[:n_val])


@torch.no_grad()
def calibrate_ranges(student: nn.Module, x: np.ndarray, method: str, batch_size: int = BATCH_SIZE) -> int:
    """Set every activation FakeQuantize of `student` to the range PTQ's `method` observer gives on
    `x` (float activations and weights, batch norm on its running statistics, as quantize_torch
    calibrates), and switch those observers off so the range stays. Returns how many were set."""
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    from edge.quantize.torch_ptq import _activation_observer, _clamp_aware, _quiet_deprecations

    fqs = {name: m for name, m in student.named_modules() if isinstance(m, FakeQuantizeBase)}
    acts = _activation_fqs(student)
    observers, hooks = {}, []
    for name, fq in acts.items():
        obs = observers[name] = _activation_observer(method)()
        inner = _clamp_aware(fq)
        obs.clamp = inner.clamp if inner is not None else None
        hooks.append(fq.register_forward_pre_hook(lambda _m, args, o=obs: o(args[0])))
    state = {name: (int(m.observer_enabled[0]), int(m.fake_quant_enabled[0])) for name, m in fqs.items()}
    modes = _modes(student)
    student.eval()
    try:
        for m in fqs.values():
            m.disable_observer()
            m.disable_fake_quant()
        with _quiet_deprecations():
            for i in range(0, len(x), batch_size):
                student(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], np.float32)))
    finally:
        for h in hooks:
            h.remove()
        for name, m in fqs.items():
            m.enable_observer(bool(state[name][0]))
            m.enable_fake_quant(bool(state[name][1]))
        _restore(modes)
    for name, fq in acts.items():
        scale, zp = observers[name].calculate_qparams()
        fq.scale.resize_(scale.shape).copy_(scale)
        fq.zero_point.resize_(zp.shape).copy_(zp)
        inner = fq.activation_post_process  # what convert_fx reads the range from
        inner.min_val = ((fq.quant_min - zp.float()) * scale).reshape(inner.min_val.shape)
        inner.max_val = ((fq.quant_max - zp.float()) * scale).reshape(inner.max_val.shape)
        fq.disable_observer()
    return len(acts)


def _train(student: nn.Module, teacher: nn.Module, data: TrainSet, val: TrainSet | None, plan: dict, lr: float,
           batch_size: int, rng, range_init: str | None, monitor) -> tuple[list[float], dict, tuple | None]:
    """The training loop. Returns the loss of every step, the held-out loss at each checkpoint
    (every epoch, and step 0), and (step, state_dict) of the checkpoint with the lowest one."""
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import disable_observer

    from edge.quantize.torch_ptq import _quiet_deprecations

    steps = plan["steps"]
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=lr, momentum=MOMENTUM)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses, checks, best, bar = [], {}, None, _Progress(steps)

    def checkpoint(step: int):
        nonlocal best
        if monitor is not None:
            monitor(step, student)
        if val is None:
            return
        checks[str(step)] = loss = _held_out_loss(student, teacher, val, batch_size)
        if step == 0 and not range_init:  # no ranges yet: step 0 is not a model to ship
            return
        if best is None or loss < best[2]:
            best = (step, copy.deepcopy(student.state_dict()), loss)

    with _quiet_deprecations():
        if plan["bn_stats_freeze_step"] == 0:
            student.apply(nniqat.freeze_bn_stats)
        checkpoint(0)
        for step, idx in enumerate(_batches(len(data.x), batch_size, steps, rng)):
            if step == plan["freeze_step"]:
                student.apply(disable_observer)
                if range_init:  # the ranges follow the trained weights once, then stay
                    calibrate_ranges(student, data.x, range_init, batch_size)
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
            if (step + 1) % plan["check_every"] == 0 or step + 1 == steps:
                checkpoint(step + 1)
    bar.close()
    return losses, checks, (best[0], best[1]) if best else None


@torch.no_grad()
def _held_out_loss(student: nn.Module, teacher: nn.Module, val: TrainSet, batch_size: int) -> float:
    """The training objective on the held-out samples (centre view, no augmentation)."""
    total = 0.0
    with evaluating(student):
        for i in range(0, len(val.x), batch_size):
            x = torch.from_numpy(val.x[i:i + batch_size])
            labels = None if val.labels is None else torch.from_numpy(val.labels[i:i + batch_size])
            total += _loss(student(x), teacher(x), labels).item() * len(x)
    return float(f"{total / len(val.x):.5g}")


@contextmanager
def evaluating(student: nn.Module):
    """The student in eval mode with its activation observers paused (weight observers only see
    the weights), for a measurement in the middle of training; every flag is restored after."""
    fqs = list(_activation_fqs(student).values())
    enabled = [int(m.observer_enabled[0]) for m in fqs]
    modes = _modes(student)
    student.eval()
    for m in fqs:
        m.disable_observer()
    try:
        yield student
    finally:
        for m, on in zip(fqs, enabled):
            m.enable_observer(bool(on))
        _restore(modes)


def _activation_fqs(student: nn.Module) -> dict:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    return {name: m for name, m in student.named_modules()
            if isinstance(m, FakeQuantizeBase) and not name.endswith("weight_fake_quant")}


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module's train/eval flag (dropout stays in eval during QAT: model.train() would undo it)."""
    return [(m, m.training) for m in model.modules()]


def _restore(modes) -> None:
    for m, training in modes:
        m.training = training


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
