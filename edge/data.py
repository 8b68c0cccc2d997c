"""Data on disk -> model inputs. One preprocessing function serves calibration, parity, evaluation
and benchmarks, so every target sees exactly the same numbers.

Images (folders of photos, labelled folders) feed a model's image input; `.npz` files hold one
array per input name (leading axis = samples) plus `labels` for a classification evaluation, for
models with several inputs or inputs that are not images; a `.npy` file holds the samples of a
model's single input."""
from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.tensors import Preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
BUILTIN_CALIB_DIR = Path(__file__).parent / "assets" / "calib"
LABELS_KEY = "labels"


@dataclass(frozen=True)
class Samples:
    """Model inputs, one array per input name (leading axis = samples), with where they came from
    and, for an evaluation set, the class labels."""

    arrays: dict[str, np.ndarray]
    source: str
    names: tuple[str, ...]
    labels: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self):
        counts = {len(a) for a in self.arrays.values()}
        if len(counts) != 1:
            raise ValueError(f"inputs have different sample counts: {counts}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def x(self) -> np.ndarray:
        """The samples of a single-input model."""
        if len(self.arrays) != 1:
            raise ValueError(f"{len(self.arrays)} inputs: use .arrays")
        return next(iter(self.arrays.values()))

    def take(self, idx, source: str | None = None) -> "Samples":
        idx = np.asarray(idx)
        mask = idx if idx.dtype == bool else np.isin(np.arange(len(self)), idx)
        return Samples({k: v[idx] for k, v in self.arrays.items()}, source or self.source,
                       tuple(n for n, keep in zip(self.names, mask) if keep),
                       None if self.labels is None else self.labels[idx])

    def head(self, n: int) -> "Samples":
        return self.take(np.arange(min(n, len(self))))

    def describe(self, method: str | None = None) -> dict:
        d = {"source": self.source, "count": len(self), "sha256_of_sample_list": hash_names(self.names)}
        if method is not None:
            d["method"] = method
        return d


def list_images(folder: str | Path, what: str = "image folder") -> list[Path]:
    """Image files directly in `folder` or below it, sorted; a UserError when there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{what} {folder} does not exist; pass a folder of .jpg/.png images")
    if not folder.is_dir():
        raise UserError(f"{what} {folder} is not a folder; pass a folder of .jpg/.png images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{what} {folder} holds no images (.jpg, .png, ...); "
                        f"put some representative photos in it")
    return files


def _to_rgb(im):
    """PIL image -> 8-bit RGB. High-bit-depth images are scaled to 8 bits: PIL's own conversion
    clips a 16-bit greyscale PNG's values at 255, which turns it white."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode != "I" or a.max() > 255:  # a 16-bit image (mode I from 16-bit PNGs in older PIL)
            a = a / 257.0
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        raise UserError("a floating-point image (mode F) has no pixel scale edge can assume; convert it to 8 or 16 bits")
    return im.convert("RGB")


def load_image(path: str | Path, pre: Preprocess, view: str = "center") -> np.ndarray:
    """One image as a float32 CHW array, normalised as the model expects.

    `view` picks the crop: "center", "flip" (mirrored centre), or a corner "tl", "tr", "bl", "br"
    (used to get more calibration samples out of the few built-in photos)."""
    from PIL import Image, UnidentifiedImageError

    rh, rw = pre.resize_hw()
    ch, cw = pre.crop_hw
    try:
        with warnings.catch_warnings():  # large but allowed images: the size check below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = _to_rgb(im)
                w, h = im.size
                s = max(rh / h, rw / w)
                im = im.resize((max(cw, round(w * s)), max(ch, round(h * s))), Image.BILINEAR)
    except Image.DecompressionBombError as e:
        raise UserError(f"{path} is too large to decode safely ({str(e).split('(')[0].strip()}); "
                        "downscale it or remove it from the folder") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable image ({e.__class__.__name__}); "
                        f"remove it from the folder") from None
    w, h = im.size
    left, top = {"tl": (0, 0), "tr": (w - cw, 0), "bl": (0, h - ch), "br": (w - cw, h - ch)}.get(
        view, ((w - cw) // 2, (h - ch) // 2))
    im = im.crop((left, top, left + cw, top + ch))
    if view == "flip":
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(im, dtype=np.float32)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_images(paths, pre: Preprocess, views=("center",), progress: str | None = None) -> np.ndarray:
    """A stack (N, C, H, W) of every path under every view."""
    from edge.progress import bar

    items = [(p, v) for p in paths for v in views]
    return np.stack([load_image(p, pre, v) for p, v in bar(items, progress)])


@dataclass(frozen=True)
class LabelledSet:
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    source: str
    classes: tuple[str, ...] | None = None  # an ImageFolder tree's class names, in index order


def load_labelled(folder: str | Path, what: str = "evaluation folder") -> LabelledSet:
    """A labelled image set: a folder with `labels.csv` (file,class_index[,...]; -1 marks an
    unlabelled row, which is skipped) and an `images/` subfolder or the files beside it, or an
    ImageFolder tree (one subfolder per class; numeric names are class indices, otherwise the
    sorted folder names give the indices, as torchvision's ImageFolder does). `what` names the
    folder in error messages."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} {folder} does not exist; pass an ImageFolder tree "
                        f"or a folder with labels.csv")
    csv_path = folder / "labels.csv"
    names = None
    if csv_path.exists():
        paths, labels = _read_labels_csv(csv_path, folder / "images" if (folder / "images").is_dir() else folder)
    else:
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        numeric = all(c.isdigit() for c in classes)
        names = None if numeric else tuple(classes)
        paths, labels = [], []
        for i, c in enumerate(classes):
            for p in list_images(folder / c, "class folder"):
                paths.append(p)
                labels.append(int(c) if numeric else i)
    if not paths:
        raise UserError(f"{what} {folder} has no labelled images; it needs labels.csv "
                        f"(file,class_index) or one subfolder per class")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UserError(f"{len(missing)} images named in {csv_path} are missing, e.g. {missing[0]}")
    return LabelledSet(tuple(paths), tuple(labels), str(folder), names)


def _read_labels_csv(csv_path: Path, base: Path) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    with open(csv_path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), 2):
            try:
                idx = int(row.get("class_index", row.get("label", "")))
                name = row["file"]
            except (KeyError, ValueError, TypeError):
                raise UserError(f"{csv_path} must have columns file,class_index (line {line} does not)") from None
            if idx < -1:
                raise UserError(f"{csv_path} line {line}: class index {idx}; use 0 or more, or -1 for an unlabelled image")
            if idx >= 0:
                paths.append(base / name)
                labels.append(idx)
    return paths, labels


def load_array(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """Samples of a single float input saved as .npy, (N, *shape[1:]) already preprocessed."""
    x = _np_load(path)
    if not isinstance(x, np.ndarray):
        raise UserError(f"{path} holds several arrays; a .npy file holds the samples of one input")
    if x.ndim != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:]):
        raise UserError(f"array {path} has shape {x.shape}; expected (N, "
                        f"{', '.join(map(str, shape[1:]))}), preprocessed like the model's input")
    if x.dtype.kind != "f":
        raise UserError(f"array {path} holds {x.dtype}; the model's input is float32")
    x = x.astype(np.float32)
    _check_finite(x, path)
    return x


def load_npz(path: str | Path, inputs, labelled: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """One array per input name from an .npz (leading axis = samples), checked against the model's
    input specs, and its `labels` (required when `labelled`)."""
    data = _np_load(path)
    if isinstance(data, np.ndarray):
        raise UserError(f"{path} is a single array; an .npz holds one array per input name "
                        f"({', '.join(i.name for i in inputs)})")
    keys = set(data.files)
    wanted = {i.name for i in inputs}
    missing, extra = sorted(wanted - keys), sorted(keys - wanted - {LABELS_KEY})
    if missing:
        raise UserError(f"{path} has no array for input {', '.join(missing)}; it holds {', '.join(sorted(keys)) or 'nothing'}"
                        f" (one array per input name: {', '.join(i.name for i in inputs)})")
    if extra:
        raise UserError(f"{path} holds arrays the model has no input for: {', '.join(extra)} "
                        f"(its inputs: {', '.join(i.name for i in inputs)})")
    arrays = {}
    for spec in inputs:
        a = data[spec.name]
        if a.ndim != len(spec.shape) or tuple(a.shape[1:]) != tuple(spec.shape[1:]):
            raise UserError(f"{path}: array {spec.name} has shape {a.shape}; input {spec.name} takes "
                            f"(N, {', '.join(map(str, spec.shape[1:]))})")
        if (a.dtype.kind == "f") != spec.is_float or (not spec.is_float and a.dtype.kind not in "iub"):
            raise UserError(f"{path}: array {spec.name} holds {a.dtype}; input {spec.name} is {spec.dtype}")
        if spec.is_float:
            _check_finite(a, f"{path}: array {spec.name}")
        arrays[spec.name] = a.astype(spec.dtype)
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise UserError(f"{path}: the arrays must hold the same number of samples (at least one), not "
                        + ", ".join(f"{k}: {len(a)}" for k, a in arrays.items()))
    labels = None
    if LABELS_KEY in keys:
        labels = data[LABELS_KEY]
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(next(iter(arrays.values()))):
            raise UserError(f"{path}: labels must be one integer class index per sample, not {labels.dtype} "
                            f"{labels.shape}")
        if (labels < -1).any():
            raise UserError(f"{path}: labels hold {int(labels.min())}; use 0 or more, or -1 for an unlabelled sample")
        keep = labels >= 0
        arrays, labels = {k: a[keep] for k, a in arrays.items()}, labels[keep].astype(np.int64)
    elif labelled:
        raise UserError(f"{path} has no 'labels' array; an evaluation .npz needs one class index per sample")
    return arrays, labels


def _np_load(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read {path}: {_first(e)} (only plain .npy/.npz arrays, no pickles)") from None


def _check_finite(x: np.ndarray, what) -> None:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise UserError(f"{what} holds {bad} NaN or infinite value(s); fix or drop those samples")


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:160] if s else e.__class__.__name__


def hash_names(names) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(str(n).encode() + b"\n")
    return h.hexdigest()[:16]
