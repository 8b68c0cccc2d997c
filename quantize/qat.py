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
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from edge import training
from edge.errors import UserError
from edge.training import CROP_SCALE, MOMENTUM, TrainSet

log = logging.getLogger("edge")

DEFAULT_EPOCHS = 10
# EfficientNet-Lite0, distillation on 250 photos, 128 steps (benchmarks/qat_int8.py): lr 1e-4 took
# the loss from 0.023 to 0.011, lr 1e-3 only from 0.030 to 0.026, and lr 1e-4 gave the higher output
# cosine to fp32 on all three targets (.ptl 0.9951 vs 0.9902). (16 steps on 64 photos had favoured
# 1e-3 over ranges alone; lr 1e-2 diverged.)
DEFAULT_LR = 1e-4
BATCH_SIZE = 16
FREEZE_AT = 2 / 3  # fraction of the steps after which the observers are frozen
# Fraction of the steps after which batch norm stops using and updating batch statistics. 0: from
# the start. Measured on EfficientNet-Lite0 (real weights, 16 photos): batch statistics alone put
# its output at a KL divergence of 2.55 from the eval-mode output, all of int8 fake quantization
# at 0.014; with batch statistics, a short fine-tune on a few hundred images chases BN noise.
FREEZE_BN_AT = 0.0
# The activation ranges training starts from: PTQ's own observer on the training samples (what
# quantize_torch calibrates with), not a moving average of the first batches' min/max.
RANGE_INIT = "histogram"
# Fraction of the samples held out to pick the checkpoint: the step (0 included: the PTQ starting
# point) whose loss on them is lowest. Few hundred images overfit; the held-out loss says when.
HOLDOUT = 0.2


@dataclass
class QATResult:
    prepared: nn.Module  # the trained fake-quant model (FX-prepared, eval mode, observers frozen)
    float_model: nn.Module  # the fine-tuned float network, BN folded, no fake quantization (an FX GraphModule)
    ranges: dict  # float_model node name -> (lo, hi, clamp or None): the learned range of that node's output
    record: dict  # the recipe and its figures, for the manifest
    # what a target with its own QAT flow (ExecuTorch's PT2E) trains from: the fp32 network, the
    # data and the settings this run used
    original: nn.Module | None = None
    data: TrainSet | None = None
    settings: dict | None = None


def fine_tune(model: nn.Module, example, data: TrainSet, *, epochs: int = DEFAULT_EPOCHS,
              lr: float = DEFAULT_LR, max_steps: int | None = None, batch_size: int = BATCH_SIZE,
              seed: int = 0, per_channel: bool = True, range_init: str | None = RANGE_INIT,
              holdout: float = HOLDOUT, monitor=None, spec=None) -> QATResult:
    """Quantization-aware fine-tuning of a copy of `model` (fp32, eval mode; left unchanged).
    per_channel=False (per-tensor weights) is for measurements; the targets use per-channel.
    range_init: the PTQ observer that sets the activation ranges before training (None: the
    moving-average min/max of the first batches). holdout: the fraction of samples held out to pick
    the checkpoint (0: keep the last step). monitor(step, student) is called at every checkpoint
    (diagnostics: benchmarks/qat_trajectory.py). `example`: a tensor or a tuple of them (one per
    input); `spec` gives each output's task (classification outputs distil by KL divergence, dense
    ones by mean squared error relative to the teacher's; without it: one classification output)."""
    from torch.ao.quantization import disable_observer

    from edge.quantize import QUANTIZERS

    if len(data) == 0:
        raise UserError(f"no training samples in {data.source}")
    tasks = [o.task for o in spec.outputs] if spec is not None else ["classification"]
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, val = training.split(data, holdout, rng)
    student, clamped = QUANTIZERS.get("fx-qnnpack").prepare_qat(model, example, per_channel=per_channel)
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    if range_init:
        calibrate_ranges(student, train.arrays, range_init, batch_size)
    per_epoch = math.ceil(len(train) / batch_size)
    steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    plan = {"steps": steps, "freeze_step": max(1, round(steps * FREEZE_AT)),
            "bn_stats_freeze_step": round(steps * FREEZE_BN_AT), "check_every": per_epoch}
    teacher = copy.deepcopy(model).eval()
    trained = _train(student, teacher, train, val, plan, lr, batch_size, rng, range_init, monitor, tasks)
    losses, checks, best = trained.losses, trained.checks, trained.best
    if best is not None:
        student.load_state_dict(best[1])
    student.apply(disable_observer)  # a FakeQuantize observes in eval mode too: keep the learned ranges
    student.eval()
    window = max(1, min(per_epoch, steps // 4))
    record = {
        "data": data.source, "samples": int(len(data)), "trained_on": int(len(train)),
        "objective": ("cross-entropy on the labels + " if data.labels is not None else "")
        + "KL divergence to the fp32 model's softmax (distillation)"
        + (" + relative MSE on the dense outputs" if any(t != "classification" for t in tasks) else ""),
        "augmentation": f"random crop {CROP_SCALE[0]:.0%}-{CROP_SCALE[1]:.0%} of the side, resized back; "
                        "random horizontal flip" if data.image else "none",
        "range_init": (f"{range_init} observer on the training samples (PTQ's), activation observers off until "
                       "the freeze step, then re-estimated the same way and frozen") if range_init
        else "moving-average min/max, frozen at the freeze step",
        **plan, "epochs": round(steps / per_epoch, 2), "batch_size": batch_size, "lr": lr,
        "optimizer": f"SGD momentum {MOMENTUM}, cosine decay to 0",
        "loss_start": float(f"{np.mean(losses[:window]):.4g}"), "loss_end": float(f"{np.mean(losses[-window:]):.4g}"),
        "holdout": {"samples": int(len(val)), "loss_by_step": checks,
                    "selected_step": best[0] if best else steps} if val is not None else None,
        "relu6_clamped_observers": clamped, "per_channel_weights": per_channel, "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("qat: %d steps, loss %.4g -> %.4g%s (%.0f s)", steps, record["loss_start"], record["loss_end"],
             f", kept step {best[0]} (held-out loss {checks[str(best[0])]:.4g})" if best else "", record["seconds"])
    settings = {"epochs": epochs, "lr": lr, "max_steps": max_steps, "batch_size": batch_size, "seed": seed,
                "holdout": holdout, "tasks": tasks}
    return QATResult(student, *float_model(student), record, model, data, settings)


@torch.no_grad()
def calibrate_ranges(student: nn.Module, x, method: str, batch_size: int = BATCH_SIZE) -> int:
    """Set every activation FakeQuantize of `student` to the range PTQ's `method` observer gives on
    `x` (float activations and weights, batch norm on its running statistics, as quantize_torch
    calibrates), and switch those observers off so the range stays. `x`: one array, or one per input in
    the model's input order. Returns how many were set."""
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
    modes = training.modes(student)
    student.eval()
    try:
        for m in fqs.values():
            m.disable_observer()
            m.disable_fake_quant()
        with _quiet_deprecations():
            arrays = list(x.values()) if isinstance(x, dict) else [np.asarray(x, np.float32)]
            for i in range(0, len(arrays[0]), batch_size):
                student(*[torch.from_numpy(np.ascontiguousarray(a[i:i + batch_size])) for a in arrays])
    finally:
        for h in hooks:
            h.remove()
        for name, m in fqs.items():
            m.enable_observer(bool(state[name][0]))
            m.enable_fake_quant(bool(state[name][1]))
        training.restore(modes)
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
           batch_size: int, rng, range_init: str | None, monitor, tasks: list[str]) -> training.Result:
    """QAT's schedule on the shared trainer: batch norm on its running statistics from
    `bn_stats_freeze_step`, observers frozen at `freeze_step` (the ranges re-estimated once on the
    trained weights), held-out losses measured with the observers paused."""
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import disable_observer

    from edge.quantize.torch_ptq import _quiet_deprecations

    def before_step(step: int) -> None:
        if step == plan["freeze_step"]:
            student.apply(disable_observer)
            if range_init:  # the ranges follow the trained weights once, then stay
                calibrate_ranges(student, data.arrays, range_init, batch_size)
        if step == plan["bn_stats_freeze_step"]:
            student.apply(nniqat.freeze_bn_stats)

    with _quiet_deprecations():
        if plan["bn_stats_freeze_step"] == 0:
            student.apply(nniqat.freeze_bn_stats)
        return training.distill(student, teacher, data, val, steps=plan["steps"], check_every=plan["check_every"],
                                lr=lr, batch_size=batch_size, rng=rng, tasks=tasks, label="qat",
                                before_step=before_step, measuring=evaluating, monitor=monitor,
                                step0_is_candidate=bool(range_init))  # no ranges yet: step 0 is not a model to ship


@contextmanager
def evaluating(student: nn.Module):
    """The student in eval mode with its activation observers paused (weight observers only see
    the weights), for a measurement in the middle of training; every flag is restored after."""
    fqs = list(_activation_fqs(student).values())
    enabled = [int(m.observer_enabled[0]) for m in fqs]
    modes = training.modes(student)
    student.eval()
    for m in fqs:
        m.disable_observer()
    try:
        yield student
    finally:
        for m, on in zip(fqs, enabled):
            m.enable_observer(bool(on))
        training.restore(modes)


def _activation_fqs(student: nn.Module) -> dict:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    return {name: m for name, m in student.named_modules()
            if isinstance(m, FakeQuantizeBase) and not name.endswith("weight_fake_quant")}


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
def learned_ranges(result: QATResult, x0) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """The learned activation ranges, each with the values its tensor takes in the fine-tuned float
    network on the first sample of x0 (samples of each input, by name, or one input's sample (C, H, W)):
    what ONNX quantization matches its tensors by. Where the
    observer recorded clamped values (a ReLU6 follows), the clamped values are given."""
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in result.ranges and isinstance(out, torch.Tensor):
                values[n.name] = out.detach().float().numpy()
            return out

    args = [a[:1] for a in x0.values()] if isinstance(x0, dict) else [np.asarray(x0, np.float32)[None]]
    Recorder(result.float_model).run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in args])
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


# ---------------------------------------------------------------- PT2E (ExecuTorch)

def pt2e_fine_tune(ctx):
    """QAT for the executorch target through PT2E's own flow: `prepare_qat_pt2e` on the graph
    captured from the fp32 network (the pt2e-xnnpack annotations, fake quantization that
    simulates conv+BN folding), trained on the shared trainer with the FX recipe's schedule and
    data (ctx.qat: the same samples, steps, learning rate, held-out pick), then converted by the
    quantizer's own convert, so the learned ranges reach the .pte as they are.

    Differences from the FX recipe, where PT2E offers no equivalent: the activation ranges start
    from a pass of moving-average min/max over the training samples (not a histogram observer),
    and batch norm runs on its running statistics by keeping the captured graph in its eval form
    (`move_exported_model_to_eval`) for the whole training."""
    from torchao.quantization.pt2e import move_exported_model_to_eval

    from edge.quantize import QUANTIZERS

    base = ctx.qat
    s = base.settings
    start = time.perf_counter()
    torch.manual_seed(s["seed"])
    rng = np.random.default_rng(s["seed"])
    train, val = training.split(base.data, s["holdout"], rng)
    q = QUANTIZERS.get("pt2e-xnnpack")
    prepared = q.prepare(copy.deepcopy(base.original).eval(), ctx.example_tensors(), keep_float=ctx.keep_float,
                         qat=True)
    student = prepared.module
    move_exported_model_to_eval(student)  # batch norm on running statistics, dropout off
    fqs = _pt2e_fqs(student)
    _pt2e_init_ranges(student, fqs, train, s["batch_size"] if prepared.batched else 1)
    per_epoch = math.ceil(len(train) / s["batch_size"])
    steps = s["epochs"] * per_epoch if s["max_steps"] is None else min(s["epochs"] * per_epoch, s["max_steps"])
    freeze = max(1, round(steps * FREEZE_AT))

    def before_step(step: int) -> None:
        if step == freeze:
            for m in fqs:
                m.disable_observer()

    @contextmanager
    def measuring(model):
        on = [bool(m.observer_enabled[0]) for m in fqs]
        for m in fqs:
            m.disable_observer()
        try:
            yield model
        finally:
            for m, o in zip(fqs, on):
                m.enable_observer(o)

    teacher = copy.deepcopy(base.original).eval()
    batch = s["batch_size"] if prepared.batched else 1
    r = training.distill(student, teacher, train, val, steps=steps, check_every=per_epoch, lr=s["lr"],
                         batch_size=batch, rng=rng, tasks=s["tasks"], label="qat (pt2e)",
                         before_step=before_step, measuring=measuring)
    if r.best is not None:
        student.load_state_dict(r.best[1])
    for m in fqs:
        m.disable_observer()
    prepared.samples = len(train)
    prepared.seconds += time.perf_counter() - start
    prepared.record = {"steps": steps, "freeze_step": freeze, "batch_size": batch, "lr": s["lr"],
                       "loss_start": float(f"{np.mean(r.losses[:per_epoch]):.4g}"),
                       "loss_end": float(f"{np.mean(r.losses[-per_epoch:]):.4g}"),
                       "selected_step": r.best[0] if r.best else steps, "trained_on": len(train)}
    log.info("qat (pt2e): %d steps, loss %.4g -> %.4g (%.0f s)", steps, prepared.record["loss_start"],
             prepared.record["loss_end"], time.perf_counter() - start)
    return prepared


def _pt2e_fqs(student: nn.Module) -> list:
    """The activation fake quantizers of a PT2E QAT graph (weights are fake-quantized by their
    own modules, which follow the weights at every step)."""
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase as AoFQ

    try:
        from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase as TaoFQ
    except ImportError:  # older torchao: torch.ao's classes
        TaoFQ = AoFQ
    out = []
    for name, m in student.named_modules():
        if isinstance(m, (AoFQ, TaoFQ)) and getattr(m, "qscheme", None) not in (torch.per_channel_symmetric,
                                                                             torch.per_channel_affine):
            out.append(m)
    return out


@torch.no_grad()
def _pt2e_init_ranges(student: nn.Module, fqs: list, data: TrainSet, batch_size: int) -> None:
    """Activation ranges from the training samples before training: observers on, fake
    quantization off, one pass (moving-average min/max), then fake quantization back on."""
    for m in fqs:
        m.disable_fake_quant()
        m.enable_observer()
    for i in range(0, len(data), batch_size):
        student(*data.batch(np.arange(i, min(i + batch_size, len(data)))))
    for m in fqs:
        m.enable_fake_quant()
