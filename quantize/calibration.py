"""One calibration set per build, fed identically to every target, and the held-out samples the
parity check runs on. Sources: `--calib DIR` (images), `--calib FILE.npy` (preprocessed
samples), or the built-in photos in edge/assets/calib (with a warning)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.data import BUILTIN_CALIB_DIR, hash_names, list_images, load_array, load_images
from edge.errors import UserError
from edge.models.spec import Preprocess

log = logging.getLogger("edge")

# Built-in photos: these calibrate; the others (cat, coffee cup, rocket: ImageNet-like objects on
# which a classifier's top-1 means something) are held out for the parity check. With a texture
# or the retina photo held out instead, top-1 agreement on near-flat logits was a coin toss.
# Several crops of each photo stretch nine images into a usable number of samples.
BUILTIN_CALIB = ("astronaut", "camera", "brick", "grass", "gravel", "retina")
BUILTIN_VIEWS = ("center", "flip", "tl", "tr", "bl", "br")
HOLDOUT_EVERY = 10  # with --calib and no --eval, every 10th sample is held out for parity


@dataclass(frozen=True)
class Samples:
    """Preprocessed samples and where they came from."""

    x: np.ndarray  # (N, C, H, W) float32
    source: str
    names: tuple[str, ...]

    def describe(self, method: str | None = None) -> dict:
        d = {"source": self.source, "count": int(len(self.x)), "sha256_of_sample_list": hash_names(self.names)}
        if method is not None:
            d["method"] = method
        return d


def _builtin(pre: Preprocess) -> tuple[Samples, Samples]:
    files = sorted(BUILTIN_CALIB_DIR.glob("*.jpg"))
    cal = [f for f in files if f.stem in BUILTIN_CALIB]
    par = [f for f in files if f.stem not in BUILTIN_CALIB]

    def views(fs):
        return tuple(f"{f.name}:{v}" for f in fs for v in BUILTIN_VIEWS)
    return (Samples(load_images(cal, pre, BUILTIN_VIEWS), "builtin", views(cal)),
            Samples(load_images(par, pre, BUILTIN_VIEWS), "builtin (held out)", views(par)))


def _split(s: Samples, holdout: bool) -> tuple[Samples, Samples | None]:
    if not holdout:
        return s, None
    idx = np.arange(len(s.x))
    held = idx % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    if held.sum() == 0 or (~held).sum() == 0:
        raise UserError(f"{s.source} has {len(s.x)} samples; with no --eval, at least "
                        f"{HOLDOUT_EVERY} are needed so that some can be held out for the parity check")
    pick = lambda m: Samples(s.x[m], s.source, tuple(n for n, k in zip(s.names, m) if k))  # noqa: E731
    return pick(~held), Samples(s.x[held], f"{s.source} (held out)", tuple(n for n, k in zip(s.names, held) if k))


def calibration_and_parity(calib: str | None, pre: Preprocess, shape: tuple[int, ...], need_calib: bool,
                           have_eval: bool) -> tuple[Samples | None, Samples | None]:
    """(calibration samples or None, parity samples or None). Parity samples are None when the
    evaluation set (--eval) will serve as the parity set."""
    if calib is None:
        cal, par = _builtin(pre)
        if need_calib:
            log.warning("calibrating on the 6 built-in photos (36 crops); calibrate on a few hundred "
                        "of your own images with --calib DIR for better int8 accuracy")
        return (cal if need_calib else None), (None if have_eval else (par if need_calib else _merge(cal, par)))
    path = Path(calib)
    if path.suffix == ".npy":
        if not path.is_file():
            raise UserError(f"calibration file {path} does not exist")
        x = load_array(path, shape)
        if len(x) == 0:
            raise UserError(f"calibration array {path} is empty")
        s = Samples(x, str(path), tuple(f"{path.name}[{i}]" for i in range(len(x))))
    else:
        files = list_images(path, "calibration folder")
        s = Samples(load_images(files, pre), str(path), tuple(str(f.relative_to(path)) for f in files))
    if not need_calib:
        return None, (None if have_eval else s)
    return _split(s, holdout=not have_eval)


def _merge(a: Samples, b: Samples) -> Samples:
    return Samples(np.concatenate([a.x, b.x]), "builtin", a.names + b.names)
