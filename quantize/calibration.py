"""One calibration set per build, fed identically to every target, and the held-out samples the
parity check runs on. Sources: `--calib DIR` (images, for a model whose input is an image),
`--calib FILE.npy` (the samples of a single input), `--calib FILE.npz` (one array per input name),
or built-in samples (with a warning): the built-in photos for an image input, and for any other
input samples drawn from its declared source (a value range, token ids, a mask), seeded."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.data import BUILTIN_CALIB_DIR, Samples, list_images, load_array, load_images, load_labelled, load_npz
from edge.errors import UserError
from edge.tensors import Image, InputSpec, Mask, Range, Tokens

log = logging.getLogger("edge")

# Built-in photos: these calibrate; the others (cat, coffee cup, rocket: ImageNet-like objects on
# which a classifier's top-1 means something) are held out for the parity check. With a texture
# or the retina photo held out instead, top-1 agreement on near-flat logits was a coin toss.
# Several crops of each photo stretch nine images into a usable number of samples.
BUILTIN_CALIB = ("astronaut", "camera", "brick", "grass", "gravel", "retina")
BUILTIN_VIEWS = ("center", "flip", "tl", "tr", "bl", "br")
HOLDOUT_EVERY = 10  # with --calib and no --eval, every 10th sample is held out for parity
SYNTHETIC_SEED = {"calibration": 1, "held out": 2, "all": 3}


def synthetic(spec: InputSpec, n: int, seed: int) -> np.ndarray:
    """n samples of a non-image input, drawn from its declared source."""
    rng = np.random.default_rng(seed)
    shape = (n, *spec.shape[1:])
    src = spec.source
    if isinstance(src, Tokens):
        return rng.integers(0, src.vocab_size, shape).astype(spec.dtype)
    if isinstance(src, Mask):  # ones for a random number of tokens (at least one), zeros after
        lengths = rng.integers(1, shape[-1] + 1, (n, *shape[1:-1], 1))
        return (np.arange(shape[-1]) < lengths).astype(spec.dtype)
    lo, hi = (src.low, src.high) if isinstance(src, Range) else (-1.0, 1.0)
    if spec.is_float:
        return rng.uniform(lo, hi, shape).astype(spec.dtype)
    return rng.integers(int(lo), max(int(hi), int(lo) + 1), shape).astype(spec.dtype)


def _photos(held_out: bool | None) -> list[Path]:
    files = sorted(BUILTIN_CALIB_DIR.glob("*.jpg"))
    if held_out is None:
        return files
    return [f for f in files if (f.stem in BUILTIN_CALIB) != held_out]


def builtin_samples(spec, views=BUILTIN_VIEWS, held_out: bool | None = None) -> dict[str, np.ndarray]:
    """Every input's built-in samples: the built-in photos under `views` for an image input
    (the calibration photos, the held-out ones, or all nine when held_out is None), and as many
    synthetic samples for the others."""
    photos = _photos(held_out)
    n = len(photos) * len(views)
    seed = SYNTHETIC_SEED["all" if held_out is None else "held out" if held_out else "calibration"]
    return {i.name: load_images(photos, i.source.preprocess, views) if isinstance(i.source, Image)
            else synthetic(i, n, seed + k) for k, i in enumerate(spec.inputs)}


def _names(spec, photos, views) -> tuple[str, ...]:
    if spec.image is not None:
        return tuple(f"{f.name}:{v}" for f in photos for v in views)
    return tuple(f"synthetic:{i}" for i in range(len(photos) * len(views)))


def builtin_sets(spec) -> tuple[Samples, Samples]:
    """(calibration, held-out) built-in samples of a model."""
    cal, par = _photos(False), _photos(True)
    source = "builtin" if spec.image is not None else "builtin (synthetic)"
    return (Samples(builtin_samples(spec, held_out=False), source, _names(spec, cal, BUILTIN_VIEWS)),
            Samples(builtin_samples(spec, held_out=True), f"{source} (held out)", _names(spec, par, BUILTIN_VIEWS)))


def _split(s: Samples, holdout: bool) -> tuple[Samples, Samples | None]:
    if not holdout:
        return s, None
    held = np.arange(len(s)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    if held.sum() == 0 or (~held).sum() == 0:
        raise UserError(f"{s.source} has {len(s)} samples; with no --eval, at least "
                        f"{HOLDOUT_EVERY} are needed so that some can be held out for the parity check")
    return s.take(~held), s.take(held, f"{s.source} (held out)")


def load_samples(path_s: str, spec, what: str = "--calib") -> Samples:
    """Samples for every input from a folder of images, an .npy or an .npz."""
    path = Path(path_s)
    if path.suffix == ".npz":
        arrays, _ = load_npz(path, spec.inputs)
        n = len(next(iter(arrays.values())))
        return Samples(arrays, str(path), tuple(f"{path.name}[{i}]" for i in range(n)))
    if path.suffix == ".npy":
        only = _single_input(spec, what, "an .npy holds one array", ".npz")
        x = load_array(path, only.shape)
        if len(x) == 0:
            raise UserError(f"{what} {path} is empty")
        return Samples({only.name: x}, str(path), tuple(f"{path.name}[{i}]" for i in range(len(x))))
    image = _image_input(spec, what)
    files = list_images(path, "calibration folder" if what == "--calib" else f"{what} folder")
    x = load_images(files, image.source.preprocess, progress=f"loading {what} images")
    return Samples({image.name: x}, str(path), tuple(str(f.relative_to(path)) for f in files))


def _single_input(spec, what: str, why: str, instead: str) -> InputSpec:
    if len(spec.inputs) != 1:
        raise UserError(f"{what}: {spec.name} has {len(spec.inputs)} inputs "
                        f"({', '.join(i.name for i in spec.inputs)}) and {why}; pass {what} data{instead} "
                        "with one array per input name")
    return spec.inputs[0]


def _image_input(spec, what: str) -> InputSpec:
    only = _single_input(spec, what, "a folder holds images", ".npz")
    if not isinstance(only.source, Image):
        raise UserError(f"{what}: {spec.name}'s input {only.name} ({only.dtype} {','.join(map(str, only.shape))}) is "
                        f"not an image; pass {what} data.npz (or .npy) with preprocessed samples")
    return only


def calibration_and_parity(calib: str | None, spec, need_calib: bool, have_eval: bool
                           ) -> tuple[Samples | None, Samples | None]:
    """(calibration samples or None, parity samples or None). Parity samples are None when the
    evaluation set (--eval) will serve as the parity set."""
    if calib is None:
        cal, par = builtin_sets(spec)
        if need_calib:
            what = "the 6 built-in photos (36 crops)" if spec.image is not None else \
                f"{len(cal)} synthetic samples drawn from the inputs' declared ranges"
            log.warning("calibrating on %s; calibrate on a few hundred of your own samples with --calib for better "
                        "int8 accuracy", what)
        return (cal if need_calib else None), (None if have_eval else (par if need_calib else _merge(cal, par)))
    s = load_samples(calib, spec)
    if not need_calib:
        return None, (None if have_eval else s)
    return _split(s, holdout=not have_eval)


def evaluation_set(path_s: str, spec) -> Samples:
    """Labelled samples: an image folder (labels.csv or ImageFolder) or an .npz with `labels`."""
    path = Path(path_s)
    if path.suffix == ".npz":
        arrays, labels = load_npz(path, spec.inputs, labelled=True)
        return Samples(arrays, f"eval {path}", tuple(f"{path.name}[{i}]" for i in range(len(labels))), labels)
    image = _image_input(spec, "--eval")
    ds = load_labelled(path)
    x = load_images(ds.paths, image.source.preprocess, progress="loading --eval images")
    return Samples({image.name: x}, f"eval {path}", tuple(str(p) for p in ds.paths), np.asarray(ds.labels))


def _merge(a: Samples, b: Samples) -> Samples:
    return Samples({k: np.concatenate([a.arrays[k], b.arrays[k]]) for k in a.arrays},
                   a.source.removesuffix(" (held out)"), a.names + b.names)
