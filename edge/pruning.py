"""Structured pruning with torch-pruning: whole channels leave the network, with every layer that
shares them (its batch norm, the depthwise convolution that follows, the next layer's inputs,
the other branches of a residual sum), so the result is a smaller plain nn.Module that every
target exports as it would the original.

* Importance: the L2 norm of each coupled channel group's weights (torch-pruning's
  GroupMagnitudeImportance(p=2)): data-free, stable and what the pruner's authors default to.
* Kept whole: the first convolution (the stem; its input is the image), the classifier (its
  outputs are the classes), and the residual streams (channels that several layers write, summed at
  skip connections) with, where a layer could lose both inputs and outputs, its narrower side: the
  channels inside each block go, so the layer that reads them keeps its outputs. Depthwise groups
  are pruned together with the channels that feed them, as the pruner requires.
* Reconstruction: after each pruning step, each layer whose inputs were cut is re-fitted by least
  squares to reproduce the unpruned network's outputs at that layer on a few training samples
  (`reconstruct`), in forward order, so the network is close to the original before any training.
  A classifier whose inputs were cut has too many weights for a few samples; the prune stage trains
  it again on the pruned network's features instead (edge.training.fit_head).
* Channel counts are rounded to multiples of ROUND_TO: ONNX Runtime ran pruned networks with odd
  channel counts slower than the unpruned one (../shared/ENVIRONMENT.md: 1.1-1.7x; 0.45-0.62x with
  16), and XNNPACK's int8 and fp32 kernels work on 8- and 16-channel tiles.
* A MACs target is met by bisection over the per-layer ratio on copies of the network (the
  counts are deterministic for a ratio), then pruned gradually: `Pruner.step()` removes an equal
  share of the channels each time, and the caller recovers accuracy in between.
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.errors import UserError
from edge.network import find_classifier, measure

ROUND_TO = 16
MAX_RATIO = 0.9  # per layer; beyond this whole stages are all but gone
# Keep the residual streams whole and prune inside the blocks, so every layer pruning cuts the inputs
# of keeps its outputs and is re-fitted by least squares. On the fine-tuned Lite0 pruned in one step to
# 0.6x MACs (547 held-out photos, benchmarks/results/prune_recipe_lite0.md): 83% top-1 after the
# re-fit; 31-33% without it, batch norm re-estimated, whether every group or only the blocks' insides
# were pruned.
KEEP_RESIDUAL = True
RIDGE = 1e-4  # least-squares re-fit: relative to the mean input energy
MIN_ROWS_PER_INPUT = 4  # a layer is re-fitted only from at least this many rows (positions x samples) per weight


@dataclass(frozen=True)
class Recovery:
    """How a pruned network trains back (prune's steps and the distill stage)."""

    lr: float
    clip: float | None  # the gradients' global norm, clipped
    batch_statistics: bool  # batch norm on batch statistics in training, running ones re-estimated after
    hints: tuple[str, ...] = ()  # layers whose outputs are matched to the unpruned network's as well

    def pairs(self, student: nn.Module, teacher: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """The hint layers, as (student, teacher) module pairs for edge.training.distill."""
        return [(student.get_submodule(n), teacher.get_submodule(n)) for n in self.hints]

    def mode(self, model: nn.Module):
        from edge.training import batch_statistics

        return batch_statistics(model) if self.batch_statistics else nullcontext(model)


# Re-fitted by least squares, the network is close to the unpruned one and its running statistics
# still hold: it trains on them. On the fine-tuned Lite0 (one step to 0.6x MACs; loss on 128 held-out
# photos): batch statistics took the loss from 1.2 to 4.8 at once (they cost even the unpruned
# network: 0.02 -> 0.6); running statistics at lr 5e-4 to 5e-3 without clipping diverged within 8
# steps; clipped at norm 1, lr 2e-3 held for 24 steps (1.48 -> 1.19) but not through a full build
# (distillation loss 3-5), lr 5e-4 went 1.48 -> 1.12 in 60 steps without a spike. Once the re-fit
# used 1,024 photos and the classifier was re-fitted too, 2 epochs at lr 5e-4 took the held-out loss
# from 0.60 to 0.67-0.73 (the pick kept step 0); 60-100-step probes of AdamW at 2e-5 to 1e-4 and of
# hints (below) were no better (benchmarks/results/compress_lite0-partial.md, prune_recovery_probes.txt).
REFITTED = Recovery(lr=5e-4, clip=1.0, batch_statistics=False)
# Pruned without re-fitting, it is broken and its statistics are wrong: with running statistics at
# lr 1e-3 the loss stayed at chance; batch statistics at 5e-3 brought it down.
BROKEN = Recovery(lr=5e-3, clip=None, batch_statistics=True)
# Hints (the re-fitted layers' outputs matched during recovery, edge.training.distill(hints=)): on the
# re-fitted, head-re-fitted Lite0 (0.6x MACs; 547 held-out photos), 100 steps of AdamW at 5e-5 ended
# at 90.31% top-1 and KL 0.2805 with them, 90.31% and 0.2800 without: no gain, so off.
HINTS = False


def recovery(refitted: list[str]) -> Recovery:
    """The recipe for a network whose `refitted` layers (edge.pruning.reconstruct's) were re-fitted;
    those layers are its hints."""
    return replace(REFITTED, hints=tuple(refitted) if HINTS else ()) if refitted else BROKEN


def _tp():
    try:
        import torch_pruning as tp
    except ImportError:
        raise UserError("--prune needs torch-pruning: pip install -e '.[compress]' (or make setup)") from None
    return tp


def _dense(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == 1)


def _channel_groups(model: nn.Module, example) -> list[tuple[set, set, int]]:
    """(dense layers that write the group's channels, dense layers that read them, channels) of
    every channel group torch-pruning finds."""
    tp = _tp()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    out = []
    for group in dg.get_all_groups():
        writers = {dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)
                   and _dense(dep.target.module)}
        readers = {dep.target.module for dep, _ in group if dg.is_in_channel_pruning_fn(dep.handler)
                   and _dense(dep.target.module)}
        out.append((writers, readers, len(group[0][1])))
    return out


def residual_streams(model: nn.Module, example) -> list[nn.Module]:
    """One layer of every residual stream: a channel group whose channels two or more dense layers
    write (their outputs are summed, as at a skip connection). Ignoring that layer keeps the
    whole stream whole, since torch-pruning skips any group that contains an ignored layer."""
    return [next(iter(w)) for w, _, _ in _channel_groups(model, example) if len(w) > 1]


def refittable_plan(model: nn.Module, example, ignored: list[nn.Module]) -> list[nn.Module]:
    """Layers to ignore so that every layer whose inputs pruning cuts keeps its outputs, and can be
    re-fitted by least squares (`reconstruct`): the residual streams, and of a layer's input and
    output channels, when both could be pruned, the narrower side (an inverted residual's block
    output, not its expanded inside)."""
    groups = [g for g in _channel_groups(model, example)]
    kept = [len(w) > 1 or any(m in ignored for m in w) for w, _, _ in groups]
    for i, (writers, _, size) in enumerate(groups):
        if kept[i]:
            continue
        for layer in writers:  # its inputs: the group it reads
            j = next((k for k, (_, r, _) in enumerate(groups) if layer in r), None)
            if j is not None and not kept[j]:
                kept[i if size <= groups[j][2] else j] = True
    return [next(iter(w)) for (w, _, _), k in zip(groups, kept) if k and w]


def _ignored(model: nn.Module, example, classes: int | None, keep_residual: bool) -> list[nn.Module]:
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    keep = convs[:1]
    if classes:
        keep.append(find_classifier(model, classes)[1])
    if keep_residual:
        keep += refittable_plan(model, example, keep)
    return keep


def make_pruner(model: nn.Module, example: tuple[torch.Tensor, ...], ratio: float, steps: int, classes: int | None,
                round_to: int = ROUND_TO, keep_residual: bool = KEEP_RESIDUAL, ratios: dict[str, float] | None = None,
                kept: list[str] | None = None):
    """A torch-pruning MetaPruner that removes `ratio` of each layer's channels over `steps` steps
    or, given `ratios` (a group's writing layer by name -> its ratio, as `allocate` gives), each
    named group's share and nothing else. `kept`: the names of the layers kept whole, when the
    caller already has them (`kept_whole`; finding them builds a dependency graph)."""
    tp = _tp()
    per_group = None
    if ratios is not None:
        ratio, per_group = 0.0, {model.get_submodule(n): r for n, r in ratios.items() if r > 0}
    ignored = ([model.get_submodule(n) for n in kept] if kept is not None
               else _ignored(model, example, classes, keep_residual))
    return tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=ratio, pruning_ratio_dict=per_group, iterative_steps=steps,
                                ignored_layers=ignored, round_to=round_to)


def kept_whole(model: nn.Module, example, classes: int | None, keep_residual: bool = KEEP_RESIDUAL) -> list[str]:
    """The names of the layers pruning keeps whole (for `make_pruner(kept=)` on copies of `model`)."""
    names = {m: n for n, m in model.named_modules()}
    return [names[m] for m in _ignored(model, example, classes, keep_residual)]


def prunable_groups(model: nn.Module, example, classes: int | None, keep_residual: bool = KEEP_RESIDUAL) -> list[str]:
    """The channel groups pruning may cut, each named by the layer that writes it (in an inverted
    residual block with the residual streams kept whole: its expansion convolution)."""
    ignored = set(_ignored(model, example, classes, keep_residual))
    names = {m: n for n, m in model.named_modules()}
    return [min(names[w] for w in writers) for writers, _, _ in _channel_groups(model, example)
            if writers and not writers & ignored]


# Sensitivity allocation (--prune-macs): each group is pruned alone at each of SCAN_RATIOS, re-fitted,
# and scored against the unpruned network; the per-group ratios that meet the MACs target with the
# least summed loss increase are then pruned together. Fine-tuned Lite0 to 0.6x MACs, re-fit on 1,024
# photos, classifier re-fitted, 547 held-out photos (benchmarks/results/prune_sensitivity_lite0.md):
# the same ratio everywhere 92.1% top-1; allocated 94.3%. The scan's cost is
# len(groups) x len(SCAN_RATIOS) re-fits on SCAN_SAMPLES samples.
SCAN_RATIOS = (0.25, 0.5, 0.75)
SCAN_SAMPLES = 128


def sensitivity(model: nn.Module, example, classes: int | None, fit: list[tuple], score: list[tuple], tasks,
                ratios=SCAN_RATIOS, after=None, progress: str = "prune: sensitivity") -> dict[str, dict[float, dict]]:
    """{group: {ratio: {"loss": the distillation loss (edge.training.loss, no labels) to `model` on
    the `score` batches, "saved": MACs saved}}}, each group pruned alone from `model` at each ratio
    and re-fitted on the `fit` batches (`reconstruct`); after(student) runs after the re-fit (the
    prune stage re-fits a classifier whose inputs were cut there)."""
    from edge.progress import bar
    from edge.training import loss

    model.eval()
    full = measure(model, example)["macs"]
    with torch.no_grad():
        targets = [model(*b) for b in score]
    groups, kept = prunable_groups(model, example, classes), kept_whole(model, example, classes)
    out: dict[str, dict[float, dict]] = {g: {} for g in groups}
    for g, r in bar([(g, r) for g in groups for r in ratios], progress, unit="trial"):
        student = copy.deepcopy(model)
        make_pruner(student, example, 0.0, 1, classes, ratios={g: r}, kept=kept).step()
        reconstruct(student, model, fit)
        if after is not None:
            after(student)
        student.eval()
        with torch.no_grad():
            value = sum(float(loss(student(*b), t, None, tasks)) * len(b[0]) for b, t in zip(score, targets))
        out[g][r] = {"loss": value / sum(len(b[0]) for b in score), "saved": full - measure(student, example)["macs"]}
    return out


def allocate(scan: dict[str, dict[float, dict]], needed: int) -> dict[str, float]:
    """Per group a ratio (0 or a scanned one) such that the MACs saved reach `needed` with the least
    summed loss (`sensitivity`'s; the unpruned network's is 0) over the groups: exact dynamic
    programming over the Pareto front of (MACs saved, loss) of the groups chosen so far."""
    most = sum(max([row["saved"] for row in rows.values()] or [0]) for rows in scan.values())
    if most < needed:
        raise UserError(f"--prune-macs cannot be reached by the sensitivity allocation: each layer group at most "
                        f"{max(max(rows) for rows in scan.values()):g} pruned saves {most / 1e6:.3g} M MACs, short "
                        f"of the {needed / 1e6:.3g} M asked; give a larger target or --prune-allocation uniform")
    front: list[tuple[int, float, dict]] = [(0, 0.0, {})]
    for g, rows in scan.items():
        options = [(0.0, 0, 0.0)] + [(r, row["saved"], row["loss"]) for r, row in sorted(rows.items())]
        grown = sorted(((saved + s, cost + c, {**choice, g: r}) for saved, cost, choice in front for r, s, c in options),
                       key=lambda t: (-t[0], t[1]))
        front, least = [], math.inf
        for state in grown:  # by MACs saved, most first: keep a state only if it costs less than every one saving more
            if state[1] < least:
                front.append(state)
                least = state[1]
    return min((t for t in front if t[0] >= needed), key=lambda t: t[1])[2]


def macs_at(model: nn.Module, example, ratio: float, classes: int | None, round_to: int = ROUND_TO,
            keep_residual: bool = KEEP_RESIDUAL) -> int:
    """MACs of a copy of `model` pruned at `ratio` in one step."""
    m = copy.deepcopy(model)
    make_pruner(m, example, ratio, 1, classes, round_to, keep_residual).step()
    return measure(m, example)["macs"]


def ratio_for_macs(model: nn.Module, example, target: int, classes: int | None, round_to: int = ROUND_TO,
                   grid: float = 0.05, tolerance: float = 0.005, keep_residual: bool = KEEP_RESIDUAL) -> float:
    """The smallest per-layer ratio whose pruned network has at most `target` MACs. MACs do not
    fall monotonically with the ratio (torch-pruning leaves a layer whole when its rounded count
    would be 0), so a grid finds the first ratio that meets the target, then bisection refines it."""
    full = measure(model, example)["macs"]
    if target >= full:
        raise UserError(f"--prune-macs asks for {target / 1e6:.3g} M MACs, but the network has {full / 1e6:.3g} M "
                        "already; give a smaller target")
    steps = int(round(MAX_RATIO / grid))
    hi = next((r for r in (grid * i for i in range(1, steps + 1))
               if macs_at(model, example, r, classes, round_to, keep_residual) <= target), None)
    if hi is None:
        least = min(macs_at(model, example, grid * i, classes, round_to, keep_residual) for i in range(1, steps + 1))
        raise UserError(f"--prune-macs {target / 1e6:.3g} M cannot be reached by pruning channels (with channel counts "
                        f"in multiples of {round_to}, the least is {least / 1e6:.3g} M); give a larger target")
    lo = hi - grid
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if macs_at(model, example, mid, classes, round_to, keep_residual) <= target:
            hi = mid
        else:
            lo = mid
    return round(hi, 4)


def channels(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every convolution and linear layer, by name."""
    return {n: (m.out_channels if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}


def _refittable(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def _fan_in(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _fan_out(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


class _Stop(Exception):
    pass


def _rows(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of the linear map it applies: (samples x positions, fan-in x kernel)."""
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(m.padding, str):
        raise ValueError("string padding")
    cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The layer's output without its bias, as rows matching `_rows`."""
    if m.bias is not None:
        y = y - (m.bias if isinstance(m, nn.Linear) else m.bias.view(1, -1, *([1] * (y.dim() - 2))))
    if isinstance(m, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


@torch.no_grad()
def reconstruct(student: nn.Module, teacher: nn.Module, batches: list[tuple[torch.Tensor, ...]],
                ridge: float = RIDGE) -> list[str]:
    """Re-fit, by least squares, every layer whose inputs pruning removed but whose outputs it kept
    (in an inverted residual: the 1x1 projection back to the residual stream; the classifier), so
    that on `batches` its outputs match the unpruned network's at the same layer (the channel
    pruning reconstruction of He et al., 2017, and ThiNet). Layer by layer in the order the forward
    pass reaches them, each from the student's own inputs, so earlier errors are compensated; with
    the residual streams kept whole, the channels that remain in a block are computed exactly as
    before, and this is the only place the block differs. Returns the layers re-fitted."""
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    names = [n for n, m in s_mods.items() if _refittable(m) and n in t_mods and type(t_mods[n]) is type(m)
             and _fan_in(m) < _fan_in(t_mods[n]) and _fan_out(m) == _fan_out(t_mods[n])]
    if not names:
        return []
    order: list[str] = []
    hooks = [s_mods[n].register_forward_hook(lambda m, i, o, n=n: order.append(n) if n not in order else None)
             for n in names]
    try:
        student.eval()(*batches[0])
    finally:
        for h in hooks:
            h.remove()
    teacher.eval()
    targets: dict[str, list[torch.Tensor]] = {n: [] for n in order}  # the teacher's outputs, per batch
    hooks = [t_mods[n].register_forward_hook(lambda m, i, o, n=n: targets[n].append(_targets(m, o)))
             for n in order]
    try:
        for b in batches:
            teacher(*b)
    finally:
        for h in hooks:
            h.remove()
    done = []
    for n in order:
        m = s_mods[n]
        gram, cross, count = None, None, 0

        def grab(mod, inputs, n=n):
            raise _Stop(inputs[0])

        h = m.register_forward_pre_hook(grab)
        try:
            for b, t in zip(batches, targets[n]):
                try:
                    student(*b)
                except _Stop as s:
                    rows = _rows(m, s.args[0]).double()
                gram = rows.T @ rows if gram is None else gram + rows.T @ rows
                cross = rows.T @ t.double() if cross is None else cross + rows.T @ t.double()
                count += len(rows)
        except ValueError:
            continue
        finally:
            h.remove()
        if count < MIN_ROWS_PER_INPUT * len(gram):
            continue  # too few rows to determine the weights (a classifier on a few samples): left to training
        lam = ridge * float(gram.diagonal().mean())
        w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), cross)  # (fan-in x k, out)
        m.weight.copy_(w.T.reshape(m.weight.shape).to(m.weight.dtype))
        targets.pop(n)
        done.append(n)
    return done
