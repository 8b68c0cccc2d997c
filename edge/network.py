"""What the training stages do to a network's shape, and how to take that shape along.

Fine-tuning gives a network a new classifier (another number of classes); pruning removes
channels. Either way the network is no longer the registry's, so a build saves it beside every
artifact (`reference.pt`: the state dict and the shapes that changed, loaded with
`weights_only=True`), and `edge verify --eval` and `edge explain` rebuild it from the registry's
network plus that file, with no code from the build folder.

* `measure`: MACs (from PyTorch's own FLOP counter, so subclassed and functional convolutions
  count), parameters and fp32 size, the figures every training stage records before and after.
* `find_classifier` / `replace_classifier`: the last `nn.Linear` that produces the classification
  output.
* `save_reference` / `load_reference` / `reshape_like`: the changed network as data.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from edge.errors import UserError

REFERENCE_FILE = "reference.pt"
# Modules whose sizes a stage may change, and the attributes that follow their parameters' shapes.
_RESIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
              nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def measure(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict:
    """MACs of one forward pass on `example` (batch 1), parameters, and fp32 bytes of the weights."""
    from torch.utils.flop_counter import FlopCounterMode

    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*example)
    finally:
        for m, t in was:
            m.training = t
    params = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"macs": int(counter.get_total_flops() // 2), "params": int(params), "fp32_bytes": int(size)}


def find_classifier(model: nn.Module, classes: int) -> tuple[str, nn.Linear]:
    """(qualified name, module) of the last nn.Linear with `classes` outputs."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    if not found:
        raise UserError(f"cannot find the classifier to replace: the network has no nn.Linear with {classes} "
                        "outputs (fine-tuning replaces the last such layer)")
    return found[-1]


def replace_classifier(model: nn.Module, classes: int, new_classes: int, seed: int = 0) -> str:
    """Give `model` a fresh classifier with `new_classes` outputs (in place); returns its name."""
    name, old = find_classifier(model, classes)
    g = torch.Generator().manual_seed(seed)
    new = nn.Linear(old.in_features, new_classes, bias=old.bias is not None)
    with torch.no_grad():  # nn.Linear's own init, from a seeded generator: the same build, the same head
        bound = 1 / old.in_features ** 0.5
        new.weight.uniform_(-bound, bound, generator=g)
        if new.bias is not None:
            new.bias.uniform_(-bound, bound, generator=g)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return name


def structure(model: nn.Module) -> dict[str, dict]:
    """The sizes of every resizable module, by qualified name (what reshape_like needs besides the
    state dict: a convolution's groups cannot be read from its weight)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            out[name] = {"features": m.num_features}
        elif isinstance(m, nn.GroupNorm):
            out[name] = {"channels": m.num_channels, "groups": m.num_groups}
        elif isinstance(m, nn.LayerNorm):
            out[name] = {"shape": list(m.normalized_shape)}
    return out


def reshape_like(model: nn.Module, sizes: dict[str, dict], state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize `model`'s modules (in place) to `sizes` (from `structure`), giving each the shapes of
    `state`'s tensors, so that load_state_dict(state) fits. Modules of other kinds are left alone."""
    modules = dict(model.named_modules())
    for name, s in sizes.items():
        m = modules.get(name)
        if m is None or not isinstance(m, _RESIZABLE):
            raise UserError(f"the saved reference names a module {name!r} that the network does not have; "
                            "was it built by another version of the model?")
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            m.in_channels, m.out_channels, m.groups = s["in"], s["out"], s["groups"]
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = s["in"], s["out"]
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.num_features = s["features"]
        elif isinstance(m, nn.GroupNorm):
            m.num_channels, m.num_groups = s["channels"], s["groups"]
        else:
            m.normalized_shape = tuple(s["shape"])
        prefix = f"{name}." if name else ""
        for key, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            saved = state.get(prefix + key)
            if t is not None and saved is not None and saved.shape != t.shape:
                new = torch.empty(saved.shape, dtype=t.dtype)
                if isinstance(t, nn.Parameter):
                    setattr(m, key, nn.Parameter(new, requires_grad=t.requires_grad))
                else:
                    m.register_buffer(key, new)
    return model


def save_reference(model: nn.Module, path: Path, classes: list[str] | None) -> None:
    """The network as data: its state dict, its module sizes and its class names."""
    torch.save({"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "structure": structure(model), "classes": classes}, path)


def load_reference(base: nn.Module, path: Path) -> tuple[nn.Module, list[str] | None]:
    """`base` (the registry's network) reshaped to the saved one and given its weights."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state, sizes, classes = saved["state_dict"], saved["structure"], saved.get("classes")
    except Exception as e:  # noqa: BLE001 - a damaged file may fail anywhere in unpickling
        raise UserError(f"{path} is not a reference edge saved ({type(e).__name__}: {e}); rebuild the artifact") from None
    reshape_like(base, sizes, state)
    try:
        base.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path} does not fit the network ({first}); was it built by another version of the model?") \
            from None
    return base.eval(), classes
