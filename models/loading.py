"""Turn `--model` and `--weights` into a ready nn.Module: registry names or a user's
`path/to/file.py:factory`, and weights from the model's source, a file, or random init."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn as nn

from edge.errors import UserError
from edge.models.spec import IMAGENET, MODELS, ModelSpec, Preprocess


def resolve_model(name: str, input_shape: tuple[int, ...] | None = None) -> ModelSpec:
    """A registered name, or `file.py:factory` for a user's own network (needs --input-shape)."""
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        return _custom_spec(name, input_shape)
    spec = MODELS.get(name)
    if input_shape is not None:
        _check_shape(input_shape)
        if input_shape[2] != input_shape[3]:
            raise UserError(f"--input-shape {input_shape}: only square inputs are supported for {name}")
        if input_shape[2] < spec.min_input_size:
            raise UserError(f"--input-shape side {input_shape[2]} is below {name}'s minimum "
                            f"{spec.min_input_size}")
    return spec


def _check_shape(shape) -> None:
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or any(s <= 0 for s in shape):
        raise UserError(f"--input-shape {','.join(map(str, shape))} must be 1,3,H,W (batch 1, RGB)")


def _custom_spec(ref: str, input_shape) -> ModelSpec:
    path_s, factory = ref.rsplit(":", 1)
    path = Path(path_s)
    if input_shape is None:
        raise UserError(f"--model {ref} is a custom network; also pass --input-shape 1,3,H,W")
    _check_shape(input_shape)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    mod_name = f"edge_user_model_{abs(hash(path.resolve()))}"
    spec_ = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[mod_name] = module
    try:
        spec_.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"cannot import {path}: {e.__class__.__name__}: {e}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UserError(f"{path} has no callable {factory!r}; --model takes path/to/file.py:factory")

    def build(*, input_size: int, num_classes: int) -> nn.Module:
        model = fn()
        if not isinstance(model, nn.Module):
            raise UserError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    h, w = input_shape[2], input_shape[3]
    if h != w:
        raise UserError(f"--input-shape {input_shape}: only square inputs are supported")
    return ModelSpec(name=path.stem, family="custom", builder=build, input_size=h,
                     preprocess=Preprocess(resize=round(h * 256 / 224), crop=h, **IMAGENET),
                     num_classes=0, min_input_size=h, description=f"user model {ref}")


def load_state_dict(path: str | Path) -> dict:
    """A state dict from a file: a bare state dict, or a checkpoint holding one under
    'state_dict' / 'model' / 'model_state_dict'. Loaded safely (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass --weights PATH, imagenet or random")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise UserError("reading .safetensors needs the package safetensors: pip install safetensors") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"cannot load weights from {path}: not a valid, safe checkpoint ({first[:160]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _imagenet_path(spec: ModelSpec) -> str:
    if spec.weights is None:
        raise UserError(f"{spec.name} has no pretrained weights; use --weights random or --weights PATH")
    path = spec.weights.locate()
    if path:
        return path
    if spec.weights.fetch is not None:
        try:
            return spec.weights.fetch()
        except Exception as e:
            reason = e.__class__.__name__
            raise UserError(f"{spec.name} ImageNet weights are not in the local cache and cannot be "
                            f"downloaded ({reason}); use --weights PATH or --weights random") from None
    raise UserError(f"{spec.name} ImageNet weights are not installed ({spec.weights.description}); "
                    f"or use --weights PATH or --weights random")


RANDOM_SEED = 0


def load_model(spec: ModelSpec, weights: str = "imagenet", input_size: int | None = None) -> nn.Module:
    """Build `spec` and load `weights` ("imagenet", "random" or a path) into it; eval mode.
    "random" is seeded (0), so that `edge verify` and `edge explain` rebuild the same network
    the build used; the caller's RNG state is left alone."""
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return spec.build(input_size).eval()
    model = spec.build(input_size)
    if weights == "imagenet" and spec.family == "custom":
        raise UserError(f"--model {spec.name} is a custom network; pass --weights PATH or --weights random")
    path = _imagenet_path(spec) if weights == "imagenet" else weights
    sd = load_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        missing, unexpected, shapes = _diff(model.state_dict(), sd)
        detail = "; ".join(x for x in (missing, unexpected, shapes) if x)
        raise UserError(f"weights in {path} do not fit {spec.name}: {detail}") from None
    return model.eval()


def _diff(expected: dict, got: dict) -> tuple[str, str, str]:
    def few(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
    miss = set(expected) - set(got)
    extra = set(got) - set(expected)
    bad = [k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape)]
    return (f"missing {few(miss)}" if miss else "", f"unexpected {few(extra)}" if extra else "",
            f"shape mismatch at {few(bad)}" if bad else "")


def random_bn_recalibrated_state(spec: ModelSpec, size: int, seed: int = 0) -> dict:
    """Random weights whose batch-norm statistics are re-estimated on the built-in photos, so
    that outputs have a real spread (plain random init gives near-constant logits that no parity
    check can judge). For tests and benchmarks of models without offline weights."""
    from edge.data import BUILTIN_CALIB_DIR, load_images

    torch.manual_seed(seed)
    model = spec.build(size)
    x = torch.from_numpy(load_images(sorted(BUILTIN_CALIB_DIR.glob("*.jpg")), spec.preprocess.at(size),
                                     ("center", "flip")))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batch below
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval().state_dict()
