"""Structured pruning with torch-pruning: whole channels leave the network, with every layer that
shares them (its batch norm, the depthwise convolution that follows, the next layer's inputs,
the other branches of a residual sum), so the result is a smaller plain nn.Module that every
target exports as it would the original.

* Importance: the L2 norm of each coupled channel group's weights (torch-pruning's
  GroupMagnitudeImportance(p=2)): data-free, stable and what the pruner's authors default to.
* Kept whole: the first convolution (the stem; its input is the image) and the classifier (its
  outputs are the classes). Depthwise groups are pruned together with the channels that feed them,
  as the pruner requires.
* Channel counts are rounded to multiples of ROUND_TO: ONNX Runtime ran pruned networks with odd
  channel counts slower than the unpruned one (../shared/ENVIRONMENT.md: 1.1-1.7x; 0.45-0.62x with
  16), and XNNPACK's int8 and fp32 kernels work on 8- and 16-channel tiles.
* A MACs target is met by bisection over the per-layer ratio on copies of the network (the
  counts are deterministic for a ratio), then pruned gradually: `Pruner.step()` removes an equal
  share of the channels each time, and the caller recovers accuracy in between.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from edge.errors import UserError
from edge.network import find_classifier, measure

ROUND_TO = 16
MAX_RATIO = 0.9  # per layer; beyond this whole stages are all but gone


def _ignored(model: nn.Module, classes: int | None) -> list[nn.Module]:
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    keep = convs[:1]
    if classes:
        keep.append(find_classifier(model, classes)[1])
    return keep


def make_pruner(model: nn.Module, example: tuple[torch.Tensor, ...], ratio: float, steps: int, classes: int | None,
                round_to: int = ROUND_TO):
    """A torch-pruning MetaPruner that removes `ratio` of each layer's channels over `steps` steps."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise UserError("--prune needs torch-pruning: pip install -e '.[compress]' (or make setup)") from None

    return tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=ratio, iterative_steps=steps, ignored_layers=_ignored(model, classes),
                                round_to=round_to)


def macs_at(model: nn.Module, example, ratio: float, classes: int | None, round_to: int = ROUND_TO) -> int:
    """MACs of a copy of `model` pruned at `ratio` in one step."""
    m = copy.deepcopy(model)
    make_pruner(m, example, ratio, 1, classes, round_to).step()
    return measure(m, example)["macs"]


def ratio_for_macs(model: nn.Module, example, target: int, classes: int | None, round_to: int = ROUND_TO,
                   grid: float = 0.05, tolerance: float = 0.005) -> float:
    """The smallest per-layer ratio whose pruned network has at most `target` MACs. MACs do not
    fall monotonically with the ratio (torch-pruning leaves a layer whole when its rounded count
    would be 0), so a grid finds the first ratio that meets the target, then bisection refines it."""
    full = measure(model, example)["macs"]
    if target >= full:
        raise UserError(f"--prune-macs asks for {target / 1e6:.3g} M MACs, but the network has {full / 1e6:.3g} M "
                        "already; give a smaller target")
    steps = int(round(MAX_RATIO / grid))
    hi = next((r for r in (grid * i for i in range(1, steps + 1))
               if macs_at(model, example, r, classes, round_to) <= target), None)
    if hi is None:
        least = min(macs_at(model, example, grid * i, classes, round_to) for i in range(1, steps + 1))
        raise UserError(f"--prune-macs {target / 1e6:.3g} M cannot be reached by pruning channels (with channel counts "
                        f"in multiples of {round_to}, the least is {least / 1e6:.3g} M); give a larger target")
    lo = hi - grid
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if macs_at(model, example, mid, classes, round_to) <= target:
            hi = mid
        else:
            lo = mid
    return round(hi, 4)


def channels(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every convolution and linear layer, by name."""
    return {n: (m.out_channels if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
