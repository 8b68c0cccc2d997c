"""The model catalog: what `edge models` lists, as data (edge/models/catalog.json), so that
listing models builds none and imports no torch. It is generated from the registry:

    python -m edge.models.catalog          # rewrite catalog.json after adding or changing a model

and tests/test_units.py fails when it is stale (names, inputs, outputs, parameters and MACs
counted on the built networks)."""
from __future__ import annotations

import json
import os
from pathlib import Path

CATALOG = Path(__file__).with_name("catalog.json")


def entries() -> list[dict]:
    return json.loads(CATALOG.read_text())["models"]


def weights_offline(w: dict) -> bool:
    """Are the weights this catalog entry describes on this machine? (No torch import.)"""
    import importlib.util

    probe = w.get("probe") or {}
    if "module" in probe:
        return importlib.util.find_spec(probe["module"]) is not None
    if "torch_hub_file" in probe:
        return (_torch_hub_dir() / "checkpoints" / probe["torch_hub_file"]).is_file()
    return False


def _torch_hub_dir() -> Path:
    """torch.hub.get_dir() without torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                        os.path.expanduser("~/.cache"), "torch")
    return Path(home) / "hub"


def count(spec) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward pass at the default input shape (convolutions,
    transposed convolutions and linear layers, wherever they are called from)."""
    import torch
    import torch.nn as nn

    from edge.quantize.calibration import builtin_samples

    model = spec.build()
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            macs += out.numel() * mod.in_channels // mod.groups * int(torch.tensor(mod.kernel_size).prod())
        elif isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            macs += inp[0].numel() * mod.out_channels // mod.groups * int(torch.tensor(mod.kernel_size).prod())
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    x = builtin_samples(spec, views=("center",))
    with torch.no_grad():
        model(*[torch.from_numpy(x[i.name][:1]) for i in spec.inputs])
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs


def entry(spec) -> dict:
    params, macs = count(spec)
    w = spec.weights
    return {"name": spec.name, "family": spec.family, "description": spec.description,
            "inputs": [i.to_json() for i in spec.inputs], "outputs": [o.to_json() for o in spec.outputs],
            "num_classes": spec.num_classes, "params": params, "macs": macs,
            "weights": None if w is None else {"name": w.name, "description": w.description,
                                               "probe": w.probe() if w.probe else None, "fetch": w.fetch is not None}}


def generate() -> dict:
    from edge.models import MODELS

    return {"schema": "edge-models/1", "models": [entry(s) for s in MODELS]}


def dumps(catalog: dict) -> str:
    """One model per line: a new model is a one-line diff."""
    models = ",\n".join("  " + json.dumps(m) for m in catalog["models"])
    return f'{{"schema": "{catalog["schema"]}", "models": [\n{models}\n]}}\n'


if __name__ == "__main__":
    CATALOG.write_text(dumps(generate()))
    print(f"wrote {CATALOG}")
