"""The shared trainer: a student network learns from a teacher (its fp32 original) and, when the
data are labelled, from the labels. QAT (edge.quantize.qat), fine-tuning (edge.stages.finetune:
no teacher, labels only), pruning recovery and distillation (edge.stages.prune, .distill) all call
the same `distill` with their own student.

* `TrainSet` / `training_set`: the samples (one array per input), from `--train` or, unlabelled,
  from the calibration set.
* `distill`: SGD with momentum and a cosine decay over a fixed number of steps, light image
  augmentation (a random crop of 80-100% of the side, resized back, and a random flip), a
  held-out checkpoint pick, and hooks for what a stage does at given steps (QAT freezes its
  observers and batch-norm statistics).
* `loss`: per output, classification by KL divergence between the softmaxes (plus cross-entropy on
  the labels for the first classification output), dense outputs by squared error relative to
  the teacher's energy.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.errors import ConversionError, UserError

MOMENTUM = 0.9
CROP_SCALE = (0.8, 1.0)  # random crop side, as a fraction of the input side
MIN_HOLDOUT = 4
# The classifier alone, on cached features (edge.stages.finetune's head; prune's re-fit of a
# classifier whose inputs it cut).
HEAD_EPOCHS = 30
HEAD_LR = 1e-3
HEAD_WEIGHT_DECAY = 1e-4
HEAD_BATCH = 64


@dataclass(frozen=True)
class TrainSet:
    """Preprocessed training samples (one array per input, in the model's input order), with labels
    when they are labelled. `image`: the input that gets augmented (None: no augmentation)."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    image: str | None = None
    classes: tuple[str, ...] | None = None  # the class names of an ImageFolder tree, in index order

    @property
    def x(self) -> np.ndarray:
        """The samples of a single-input model."""
        return next(iter(self.arrays.values()))

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx, augment=None) -> tuple:
        """The tensors of samples `idx`, the image input augmented by `augment(tensor)`."""
        return tuple(augment(torch.from_numpy(a[idx])) if augment and k == self.image else torch.from_numpy(a[idx])
                     for k, a in self.arrays.items())

    def take(self, idx) -> "TrainSet":
        return TrainSet({k: a[idx] for k, a in self.arrays.items()}, None if self.labels is None else self.labels[idx],
                        self.source, self.image, self.classes)


def training_set(train: str | None, calib, spec) -> TrainSet:
    """`--train` data (labelled: an image folder with labels.csv or an ImageFolder tree, or an .npz
    with one array per input and `labels`), else the calibration samples, unlabelled."""
    from pathlib import Path

    from edge.data import load_images, load_labelled, load_npz

    image = spec.image.name if spec.image is not None else None
    if train is None:
        return TrainSet(dict(calib.arrays), None, f"calibration set ({calib.source}), unlabelled", image)
    names = None
    if Path(train).suffix == ".npz":
        arrays, labels = load_npz(train, spec.inputs, labelled=True)
        source = f"{train} (labelled, {len(labels)} samples)"
    else:
        if image is None or len(spec.inputs) != 1:
            raise UserError(f"--train {train}: {spec.name}'s input is not one image; pass --train data.npz "
                            "(one array per input name, and labels)")
        ds = load_labelled(train, what="--train folder")
        labels, names = np.asarray(ds.labels, np.int64), ds.classes
        arrays = {image: load_images(ds.paths, spec.image.source.preprocess, progress="loading --train images")}
        source = f"{train} (labelled, {len(labels)} images)"
    if not any(o.task == "classification" for o in spec.outputs):
        raise UserError(f"--train gives class labels, but {spec.name} has no classification output to train them on")
    return TrainSet(arrays, labels.astype(np.int64), source, image, names)


def check_classes(data: TrainSet, classes: int) -> None:
    """The labels of `data` are classes of a model with `classes` outputs (not fine-tuned to them)."""
    if data.labels is not None and classes and data.labels.max() >= classes:
        raise UserError(f"--train {data.source} has class index {data.labels.max()}, but the model has {classes} "
                        "classes; add --finetune to train a new classifier on --train's classes")


def split(data: TrainSet, holdout: float, rng) -> tuple[TrainSet, TrainSet | None]:
    """Hold out a random `holdout` fraction of the samples to pick the checkpoint with (None when
    either part would have fewer than MIN_HOLDOUT samples)."""
    n_val = int(round(len(data) * holdout))
    if holdout <= 0 or n_val < MIN_HOLDOUT or len(data) - n_val < MIN_HOLDOUT:
        return data, None
    perm = rng.permutation(len(data))
    return data.take(np.sort(perm[n_val:])), data.take(np.sort(perm[:n_val]))


@dataclass
class Result:
    losses: list[float]  # the training loss of every step
    checks: dict[str, float]  # held-out loss at each checkpoint (step 0, every `check_every` steps, the last)
    best: tuple[int, dict] | None  # (step, state_dict) of the checkpoint with the lowest held-out loss


def distill(student: nn.Module, teacher: nn.Module | None, data: TrainSet, val: TrainSet | None, *, steps: int,
            check_every: int, lr: float, batch_size: int, rng, tasks=("classification",), label: str = "train",
            before_step: Callable[[int], None] | None = None, measuring: Callable | None = None,
            monitor: Callable | None = None, step0_is_candidate: bool = True, clip: float | None = None,
            optimizer: str = "sgd", hints: Sequence[tuple[nn.Module, nn.Module]] = ()) -> Result:
    """Train `student` (in place) for `steps` batches against `teacher`'s outputs and `data`'s labels
(teacher None: the labels alone, which `data` must then have).
    before_step(step) runs before each step (a stage's schedule); measuring(student) is the context
    the held-out loss is computed in (default: eval mode, restored after); monitor(step, student) is
    called at every checkpoint. `rng`: numpy Generator for batches and augmentation. `clip`: the
    gradients' global norm is clipped to this before each step. `optimizer`: "sgd" (momentum
    MOMENTUM) or "adamw" (no weight decay), either with the cosine decay. `hints`: (student layer,
    teacher layer) pairs whose outputs are matched as well (relative squared error, averaged over
    the pairs, added to the training loss; FitNets' hints): many numbers per sample where 10 classes
    give the softmax few. The held-out loss that picks the checkpoint leaves them out."""
    from edge.progress import Counter

    params = [p for p in student.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    else:
        raise ValueError(f"optimizer {optimizer!r}: 'sgd' or 'adamw'")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    r, bar = Result([], {}, None), Counter(steps, label)
    best_loss = None

    def checkpoint(step: int):
        nonlocal best_loss
        if monitor is not None:
            monitor(step, student)
        if val is None:
            return
        r.checks[str(step)] = loss = held_out_loss(student, teacher, val, batch_size, tasks, measuring)
        if step == 0 and not step0_is_candidate:
            return
        if best_loss is None or loss < best_loss:
            r.best, best_loss = (step, copy.deepcopy(student.state_dict())), loss

    checkpoint(0)
    with _capture(hints) as hinted:
        for step, idx in enumerate(batches(len(data), batch_size, steps, rng)):
            if before_step is not None:
                before_step(step)
            x = data.batch(idx, lambda t: augment(t, rng))
            with torch.no_grad():
                target = None if teacher is None else teacher(*x)
            labels = None if data.labels is None else torch.from_numpy(data.labels[idx])
            value = loss(student(*x), target, labels, tasks)
            if hinted is not None:
                value = value + hinted()
            if not torch.isfinite(value):
                bar.close()
                raise ConversionError(f"training ({label}) diverged at step {step + 1} of {steps} "
                                      f"(loss {value.item()}); lower --lr (it was {lr:g})")
            opt.zero_grad(set_to_none=True)
            value.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            r.losses.append(value.item())
            bar.update(step + 1, loss=r.losses[-1])
            if (step + 1) % check_every == 0 or step + 1 == steps:
                checkpoint(step + 1)
    bar.close()
    return r


@contextmanager
def _capture(pairs: Sequence[tuple[nn.Module, nn.Module]]):
    """Forward hooks on each (student, teacher) layer pair; yields a function giving the mean relative
    squared error between their latest outputs (None when there are no pairs)."""
    if not pairs:
        yield None
        return
    got: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: got.__setitem__(k, o))
             for j, pair in enumerate(pairs) for k, m in ((2 * j, pair[0]), (2 * j + 1, pair[1]))]

    def error() -> torch.Tensor:
        return sum(((got[2 * j] - got[2 * j + 1].detach()) ** 2).mean() / (got[2 * j + 1].detach() ** 2).mean()
                   .clamp_min(1e-12) for j in range(len(pairs))) / len(pairs)

    try:
        yield error
    finally:
        for h in hooks:
            h.remove()


def fit_head(model: nn.Module, head: str, train: TrainSet, val: TrainSet | None,
             teacher: nn.Module | None = None, label: str = "head features") -> dict:
    """Train the classifier `head` of `model` alone, on the backbone's cached features (centre view),
    keeping the epoch with the lowest held-out loss: cross-entropy on the labels or, when `train` is
    unlabelled, the KL divergence to `teacher`'s softmax. The objective is edge.training.loss."""
    layer = model.get_submodule(head)
    if train.labels is None and teacher is None:
        raise ValueError("fit_head: unlabelled samples need a teacher")
    f_train = _features(model, layer, train, label)
    f_val = _features(model, layer, val, label) if val is not None else None
    unlabelled = train.labels is None
    y_train = _logits(teacher, train) if unlabelled else torch.from_numpy(train.labels)
    y_val = None if val is None else _logits(teacher, val) if unlabelled else torch.from_numpy(val.labels)

    def objective(logits, y):
        return loss(logits, y, None) if unlabelled else F.cross_entropy(logits, y)

    opt = torch.optim.AdamW(layer.parameters(), lr=HEAD_LR, weight_decay=HEAD_WEIGHT_DECAY)
    g = torch.Generator().manual_seed(0)
    best, start = None, None
    for epoch in range(HEAD_EPOCHS + 1):
        if epoch:
            for idx in torch.randperm(len(f_train), generator=g).split(HEAD_BATCH):
                value = objective(layer(f_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
        with torch.no_grad():
            f, y = (f_val, y_val) if f_val is not None else (f_train, y_train)
            logits = layer(f)
            target = y.argmax(1) if unlabelled else y
            held = (objective(logits, y).item(), (logits.argmax(1) == target).float().mean().item())
        start = start or held
        if epoch and (best is None or held[0] < best[1][0]):
            best = (epoch, held, copy.deepcopy(layer.state_dict()))
    layer.load_state_dict(best[2])
    return {"epochs": HEAD_EPOCHS, "kept_epoch": best[0], "held_out_loss": round(best[1][0], 4),
            "held_out_top1": round(best[1][1], 4), "loss_before": round(start[0], 4),
            "on": "held-out" if f_val is not None else "training samples",
            "objective": "KL divergence to the teacher" if unlabelled else "cross-entropy on the labels"}


def _features(model: nn.Module, layer: nn.Module, data: TrainSet, label: str, batch: int = 64) -> torch.Tensor:
    """The inputs of `layer` over `data` (centre view, eval mode)."""
    from edge.progress import bar

    got = []
    hook = layer.register_forward_pre_hook(lambda m, args: got.append(args[0].detach().clone()))
    try:
        with _eval_mode(model), torch.no_grad():
            for i in bar(range(0, len(data), batch), label, total=-(-len(data) // batch), unit="batch"):
                model(*data.batch(np.arange(i, min(i + batch, len(data)))))
    finally:
        hook.remove()
    return torch.cat(got)


@torch.no_grad()
def _logits(model: nn.Module, data: TrainSet, batch: int = 64) -> torch.Tensor:
    """The first output of `model` over `data` (centre view, eval mode)."""
    from edge.models.loading import output_list

    with _eval_mode(model):
        return torch.cat([output_list(model(*data.batch(np.arange(i, min(i + batch, len(data))))))[0]
                          for i in range(0, len(data), batch)])


@torch.no_grad()
def held_out_loss(student: nn.Module, teacher: nn.Module | None, val: TrainSet, batch_size: int,
                  tasks=("classification",), measuring: Callable | None = None) -> float:
    """The training objective on the held-out samples (centre view, no augmentation)."""
    total = 0.0
    with (measuring or _eval_mode)(student):
        for i in range(0, len(val), batch_size):
            idx = np.arange(i, min(i + batch_size, len(val)))
            x = val.batch(idx)
            labels = None if val.labels is None else torch.from_numpy(val.labels[idx])
            total += loss(student(*x), None if teacher is None else teacher(*x), labels, tasks).item() * len(idx)
    return float(f"{total / len(val):.5g}")


def modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module's train/eval flag, to put back with `restore` (model.train() would also undo a
    stage's choices, such as dropout kept in eval mode)."""
    return [(m, m.training) for m in model.modules()]


def restore(saved: list[tuple[nn.Module, bool]]) -> None:
    for m, was_training in saved:
        m.training = was_training


@contextmanager
def _eval_mode(model: nn.Module):
    """`model` in eval mode, every module's train/eval flag restored after."""
    saved = modes(model)
    model.eval()
    try:
        yield model
    finally:
        restore(saved)


DEAD_VARIANCE = 1e-10


@torch.no_grad()
def silence_dead_channels(model: nn.Module) -> int:
    """Set to 0 the scale of every batch-norm channel whose running variance is 0 (below
    DEAD_VARIANCE): a channel whose input never varied (its convolution's weights decayed to 0), so
    that it outputs its shift whatever the scale. The outputs do not change; what changes is
    training on running statistics, where such a channel multiplies its input's gradient and any
    change to it by scale / sqrt(eps) (about 50 in EfficientNet-Lite0's stem, eps 1e-3), and the
    first SGD steps blow it up. Returns the channels silenced."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats:
            dead = m.running_var < DEAD_VARIANCE
            m.weight[dead] = 0.0
            n += int(dead.sum())
    return n


@contextmanager
def batch_statistics(model: nn.Module, momentum: float = 0.1):
    """Batch norm in train mode (normalising by batch statistics, running statistics following at
    `momentum`), every other module as it is; restored after. For training a network whose
    statistics have changed (a pruned one); held-out checks still run in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, m.momentum) for m in bns]
    for m in bns:
        m.train()
        m.momentum = momentum
    try:
        yield model
    finally:
        for m, was, mom in saved:
            m.training, m.momentum = was, mom


@torch.no_grad()
def reestimate_bn(model: nn.Module, data: TrainSet, batch_size: int = 32, samples: int = 1024) -> int:
    """Every batch norm's running statistics recomputed on up to `samples` training samples (centre
    view, a plain average over the batches); returns how many samples were used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    n = min(samples, len(data))
    saved = modes(model)
    momenta = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i in range(0, n, batch_size):
            model(*data.batch(np.arange(i, min(i + batch_size, n))))
    finally:
        restore(saved)
        for m, mom in momenta:
            m.momentum = mom
    return n


def batches(n: int, batch_size: int, steps: int, rng):
    """Indices of `steps` batches, epoch after epoch, each epoch a fresh permutation."""
    done = 0
    while True:
        perm = rng.permutation(n)
        for i in range(0, n, batch_size):
            if done == steps:
                return
            yield np.sort(perm[i:i + batch_size])
            done += 1


def augment(x: torch.Tensor, rng) -> torch.Tensor:
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


def loss(student, teacher, labels: torch.Tensor | None, tasks=("classification",)) -> torch.Tensor:
    """Distillation per output (classification: KL divergence between the softmaxes; dense: squared
    error relative to the teacher's energy), plus cross-entropy on the labels for the first
    classification output. teacher None: the cross-entropy alone."""
    from edge.models.loading import output_list

    total, labelled = 0.0, labels is None
    students = output_list(student)
    teachers = output_list(teacher) if teacher is not None else [None] * len(students)
    for s, t, task in zip(students, teachers, tasks):
        if t is None:
            if task == "classification" and not labelled:
                total, labelled = total + F.cross_entropy(s, labels), True
        elif task == "classification":
            total = total + F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")
            if not labelled:
                total, labelled = total + F.cross_entropy(s, labels), True
        else:
            total = total + ((s - t) ** 2).mean() / (t ** 2).mean().clamp_min(1e-12)
    return total
