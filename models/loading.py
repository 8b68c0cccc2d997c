"""Turn `--model` and `--weights` into a ready nn.Module: registry names or a user's
`path/to/file.py:factory`, and weights from the model's source, a file, or random init.

A user's file may define `example_inputs()`, returning a tuple of tensors (names from `forward`'s
signature): it fixes the input specs, any number, rank and dtype. Without it, `--input-shape`
gives each input's shape (float32). How samples are made for an input is guessed from what it
looks like (an RGB image: 4-D float with 3 channels; token ids or a 0/1 mask: integers), and an
output is a classification output when it is (N, classes), dense otherwise, unless `--task`
says otherwise. Everything the user's code can do wrong (raise, exit, need arguments, return
something else) becomes one line and exit 2.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edge.errors import UserError
from edge.models.spec import IMAGENET, MODELS, ModelSpec
from edge.tensors import DTYPES, TASKS, Image, InputSpec, Mask, OutputSpec, Preprocess, Range, Tokens, check_size

RANDOM_SEED = 0
RANDOM_WEIGHTS_HINT = ("--weights random: the artifact's size, speed, conversion and agreement with the PyTorch model "
                       "(cosine, SQNR) are real; its accuracy is not, and nothing about accuracy can be checked")


def is_custom(name: str) -> bool:
    return ":" in name and name.split(":", 1)[0].endswith(".py")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model(name: str, input_shape=None, tasks: dict[str, str] | None = None) -> ModelSpec:
    """A registered name, or `file.py:factory` for a user's own network. `input_shape`: one shape
    (the first input's) or a tuple of shapes, one per input. `tasks`: output name ("" for every
    output) -> task, overriding what the spec or the guess says."""
    shapes = _shapes(input_shape)
    spec = _custom_spec(name, shapes) if is_custom(name) else _registered(name, shapes)
    return _with_tasks(spec, tasks or {})


def _shapes(input_shape) -> tuple[tuple[int, ...], ...]:
    if not input_shape:
        return ()
    if all(isinstance(s, (int, np.integer)) for s in input_shape):
        input_shape = (input_shape,)
    shapes = tuple(tuple(int(d) for d in s) for s in input_shape)
    for s in shapes:
        if not s or any(d <= 0 for d in s):
            raise UserError(f"--input-shape {','.join(map(str, s))}: every dimension must be a positive whole number")
        if s[0] != 1:
            raise UserError(f"--input-shape {','.join(map(str, s))}: the batch dimension must be 1 "
                            "(edge's artifacts run one sample at a time)")
        check_size(s, "--input-shape")
    return shapes


def _registered(name: str, shapes) -> ModelSpec:
    spec = MODELS.get(name)
    if not shapes:
        return spec
    if len(shapes) > 1 and len(shapes) != len(spec.inputs):  # one shape is the first input's
        raise UserError(f"{name} has {len(spec.inputs)} input(s) but --input-shape gives {len(shapes)}")
    if any(tuple(s) != tuple(i.shape) for s, i in zip(shapes[1:], spec.inputs[1:])):
        raise UserError(f"{name}: only its first input can change shape")
    shape, first = shapes[0], spec.inputs[0]
    if tuple(shape) == tuple(first.shape):
        return spec
    if not spec.resizable or len(shape) != len(first.shape) or shape[:-2] != first.shape[:-2]:
        fixed = ",".join(map(str, first.shape[:-2]))
        raise UserError(f"--input-shape {','.join(map(str, shape))} does not fit {name}: it takes "
                        f"{fixed},H,W" + ("" if spec.resizable else " at its own size only"))
    if min(shape[-2:]) < spec.min_input_size:
        raise UserError(f"--input-shape {','.join(map(str, shape))}: a side below {name}'s minimum "
                        f"{spec.min_input_size}")
    return spec.at(shape)


def _with_tasks(spec: ModelSpec, tasks: dict[str, str]) -> ModelSpec:
    if not tasks:
        return spec
    names = {o.name for o in spec.outputs}
    for out, task in tasks.items():
        if task not in TASKS:
            raise UserError(f"--task {out + '=' if out else ''}{task}: unknown task; choose one of {', '.join(TASKS)}")
        if out and out not in names:
            raise UserError(f"--task {out}={task}: {spec.name} has no output {out!r}; its outputs: {', '.join(names)}")
    outputs = tuple(replace(o, task=tasks.get(o.name, tasks.get("", o.task))) for o in spec.outputs)
    return replace(spec, outputs=outputs)


# ---------------------------------------------------------------- a user's own network

def guarded(spec: ModelSpec, what: str):
    """user_code(...) around a user's network, nothing around edge's own models."""
    return user_code(f"{spec.name}: {what}") if spec.family == "custom" else contextlib.nullcontext()


@contextlib.contextmanager
def user_code(what: str):
    """Run the user's code: anything it raises, or a sys.exit(), becomes one UserError line."""
    try:
        yield
    except UserError:
        raise
    except KeyboardInterrupt:
        raise
    except SystemExit as e:
        raise UserError(f"{what} called sys.exit({e.code!r}); a model file must not exit") from None
    except BaseException as e:  # noqa: BLE001 - the user's code may raise anything
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{what} raised {e.__class__.__name__}{': ' + first if first else ''}") from None


def _import_file(path: Path):
    mod_name = f"edge_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec_ = importlib.util.spec_from_file_location(mod_name, path)
    if spec_ is None:
        raise UserError(f"{path} is not a Python file edge can import; --model takes path/to/file.py:factory")
    module = importlib.util.module_from_spec(spec_)
    sys.modules[mod_name] = module
    with user_code(f"importing {path}"):
        spec_.loader.exec_module(module)
    return module


def _call_factory(fn, ref: str) -> nn.Module:
    required = [p.name for p in _params(fn) if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise UserError(f"{ref} needs arguments ({', '.join(required)}); --model takes a factory that builds "
                        "the network with no arguments (give the others defaults, or wrap it)")
    with user_code(ref):
        model = fn()
    if not isinstance(model, nn.Module):
        raise UserError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _params(fn) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []


def input_names(model: nn.Module, n: int) -> list[str]:
    """The names of forward's first n parameters (input0, input1, ... where forward takes *args)."""
    params = [p for p in _params(model.forward) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params[:n]]
    if len(names) < n:
        names += [f"input{i}" for i in range(len(names), n)]
    return names


def _example_inputs(module, path: Path) -> tuple[torch.Tensor, ...] | None:
    fn = getattr(module, "example_inputs", None)
    if fn is None:
        return None
    if not callable(fn):
        raise UserError(f"{path}: example_inputs must be a function returning a tuple of tensors")
    with user_code(f"{path}: example_inputs()"):
        ex = fn()
    ex = (ex,) if isinstance(ex, torch.Tensor) else ex
    if not isinstance(ex, (tuple, list)) or not ex or not all(isinstance(t, torch.Tensor) for t in ex):
        raise UserError(f"{path}: example_inputs() must return a tensor or a tuple of tensors, not "
                        f"{type(ex).__name__}")
    for t in ex:
        if str(t.dtype).removeprefix("torch.") not in DTYPES:
            raise UserError(f"{path}: example_inputs() gives a {t.dtype} tensor; edge handles {', '.join(DTYPES)}")
        if t.dim() == 0 or t.shape[0] != 1:
            raise UserError(f"{path}: example_inputs() must give batch-1 tensors (shape 1,...), not {tuple(t.shape)}")
    return tuple(ex)


def _guess_input(name: str, example: torch.Tensor, given_values: bool) -> InputSpec:
    """An input spec from an example tensor: how to make samples for it is guessed from its look."""
    shape, dtype = tuple(example.shape), str(example.dtype).removeprefix("torch.")
    if dtype in ("float32", "float16"):
        if len(shape) == 4 and shape[1] == 3:  # an RGB image: the built-in photos calibrate it
            h, w = shape[2:]
            pre = Preprocess(resize=round(min(h, w) * 256 / 224), crop=h if h == w else (h, w), **IMAGENET)
            return InputSpec(name, shape, "float32", "NCHW", Image(pre))
        lo, hi = (float(example.min()), float(example.max())) if given_values else (-1.0, 1.0)
        return InputSpec(name, shape, "float32", None, Range(lo, hi) if hi > lo else Range())
    values = example.flatten().tolist() if given_values else [0]
    if given_values and set(values) <= {0, 1} and ("mask" in name.lower() or dtype == "bool"):
        return InputSpec(name, shape, dtype, None, Mask())
    return InputSpec(name, shape, dtype, None, Tokens(max(2, int(max(values)) + 1)))


def _guess_output(name: str, y: torch.Tensor) -> OutputSpec:
    task = "classification" if y.dim() == 2 and y.shape[1] >= 2 and y.is_floating_point() else "dense"
    return OutputSpec(name, task, tuple(y.shape))


def _flat_outputs(y) -> list[tuple[str | None, torch.Tensor]]:
    if isinstance(y, torch.Tensor):
        return [(None, y)]
    if isinstance(y, dict):
        return [(str(k), v) for k, v in y.items()]
    if isinstance(y, (tuple, list)):
        return [(None, v) for v in y]
    raise UserError(f"the model returned {type(y).__name__}; edge takes a tensor, a tuple of tensors or a dict")


def output_list(y) -> list[torch.Tensor]:
    """A forward pass's outputs in order (a tensor, a tuple or list, or a dict's values)."""
    return [v for _, v in _flat_outputs(y)]


def _custom_spec(ref: str, shapes) -> ModelSpec:
    path_s, factory = ref.rsplit(":", 1)
    path = Path(path_s)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    module = _import_file(path)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UserError(f"{path} has no callable {factory!r}; --model takes path/to/file.py:factory")
    model = _call_factory(fn, ref).eval()
    examples = _example_inputs(module, path)
    given = examples is not None
    if not given:
        if not shapes:
            raise UserError(f"--model {ref} is a custom network; pass --input-shape 1,3,H,W (one per input) "
                            "or define example_inputs() in the file")
        n = _forward_arity(model)
        if n is not None and len(shapes) != n:
            raise UserError(f"{ref}: forward takes {n} input(s) but --input-shape gives {len(shapes)}")
        examples = tuple(torch.zeros(s) for s in shapes)
    elif shapes and tuple(map(tuple, (e.shape for e in examples))) != tuple(shapes):
        raise UserError(f"{path}: example_inputs() fixes the input shapes "
                        f"({'; '.join(','.join(map(str, e.shape)) for e in examples)}); drop --input-shape")
    names = input_names(model, len(examples))
    inputs = tuple(_guess_input(n, e, given) for n, e in zip(names, examples))
    with torch.no_grad(), user_code(f"{ref}: forward on inputs of shape "
                                     f"{'; '.join(','.join(map(str, e.shape)) for e in examples)}"):
        y = model(*examples)
    flat = _flat_outputs(y)
    if not flat or not all(isinstance(v, torch.Tensor) for _, v in flat):
        raise UserError(f"{ref}: forward must return tensors")
    out_names = [k or ("output" if len(flat) == 1 else f"output{i}") for i, (k, _) in enumerate(flat)]
    outputs = tuple(_guess_output(n, v) for n, (_, v) in zip(out_names, flat))
    classes = next((o.shape[1] for o in outputs if o.task == "classification"), 0)
    first = inputs[0]
    return ModelSpec(name=path.stem, family="custom", builder=_rebuilder(fn, ref), inputs=inputs,
                     outputs=outputs, num_classes=classes,
                     min_input_size=min(first.shape[-2:]) if len(first.shape) >= 3 else 1,
                     resizable=False, description=f"user model {ref}")


def _forward_arity(model: nn.Module) -> int | None:
    params = _params(model.forward)
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is inspect.Parameter.empty
               for p in params)


def _rebuilder(fn, ref: str):
    def build(*, input_shape=None, num_classes: int = 0) -> nn.Module:
        return _call_factory(fn, ref)
    return build


# ---------------------------------------------------------------- weights

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
        raise UserError(f"cannot load weights from {path}: {_why_unsafe(e)}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict (a mapping of names to tensors); save the model's "
                        "state_dict() with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _why_unsafe(e: Exception) -> str:
    """torch's weights-only refusal is a long paragraph with ANSI escapes; say it in one line."""
    text = str(e)
    if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
        return ("not a valid, safe checkpoint: it holds pickled Python objects that a weights-only load refuses "
                "to run (a whole model or custom classes); save the model's state_dict() instead: "
                "torch.save(model.state_dict(), path)")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), e.__class__.__name__)
    import re

    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    return f"not a valid, safe checkpoint ({first[:160]})"


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
            raise UserError(f"{spec.name} ImageNet weights are not in the local cache and cannot be downloaded "
                            f"({reason}); use --weights PATH, or {RANDOM_WEIGHTS_HINT}") from None
    raise UserError(f"{spec.name} ImageNet weights are not installed ({spec.weights.description}); "
                    f"use --weights PATH, or {RANDOM_WEIGHTS_HINT}")


def load_model(spec: ModelSpec, weights: str = "imagenet", input_size=None) -> nn.Module:
    """Build `spec` and load `weights` ("imagenet", "random" or a path) into it; eval mode.
    "random" is seeded (0) and its batch-norm statistics are re-estimated on the built-in samples
    (plain random init gives near-constant outputs that no parity check can judge, and int8
    collapses to zeros), so `edge verify` and `edge explain` rebuild the same network. The
    caller's RNG state is left alone."""
    if input_size is not None:
        spec = spec.at(spec.input_shape(input_size) if isinstance(input_size, int) or len(input_size) == 2
                       else tuple(input_size))
    if weights == "random":
        return random_model(spec)
    with guarded(spec, "building the network"):
        model = spec.build()
    if weights == "imagenet" and spec.family == "custom":
        ref = spec.description.removeprefix("user model ")
        raise UserError(f"--model {ref} is a custom network (no ImageNet weights); pass --weights PATH or "
                        "--weights random")
    path = _imagenet_path(spec) if weights == "imagenet" else weights
    sd = load_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError:
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


def random_model(spec: ModelSpec, seed: int = RANDOM_SEED) -> nn.Module:
    """Seeded random weights with batch-norm statistics re-estimated on the built-in samples."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with guarded(spec, "building the network"):
            model = spec.build()
        _reestimate_bn(model, spec)
    return model.eval()


def _reestimate_bn(model: nn.Module, spec: ModelSpec) -> None:
    from edge.quantize.calibration import builtin_samples

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    x = builtin_samples(spec, views=("center", "flip"))
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batch below
    model.train()
    try:
        with torch.no_grad(), guarded(spec, "forward"):
            model(*[torch.from_numpy(x[i.name]) for i in spec.inputs])
    finally:
        model.eval()


def random_bn_recalibrated_state(spec: ModelSpec, size=None, seed: int = 0) -> dict:
    """Random weights whose batch-norm statistics are re-estimated on the built-in photos, so
    that outputs have a real spread. For tests and benchmarks of models without offline weights."""
    if size is not None:
        spec = spec.at(spec.input_shape(size) if isinstance(size, int) or len(size) == 2 else tuple(size))
    return random_model(spec, seed).state_dict()
