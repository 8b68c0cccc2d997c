"""Images on disk -> model inputs. One preprocessing function serves calibration, parity,
evaluation and benchmarks, so every target sees exactly the same numbers."""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.models.spec import Preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
BUILTIN_CALIB_DIR = Path(__file__).parent / "assets" / "calib"


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


def load_image(path: str | Path, pre: Preprocess, view: str = "center") -> np.ndarray:
    """One image as a float32 CHW array, normalised as the model expects.

    `view` picks the crop: "center", "flip" (mirrored centre), or a corner "tl", "tr", "bl", "br"
    (used to get more calibration samples out of the few built-in photos)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = pre.resize / min(w, h)
            im = im.resize((max(pre.crop, round(w * s)), max(pre.crop, round(h * s))), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path} is not a readable image ({e.__class__.__name__}); "
                        f"remove it from the folder") from None
    w, h = im.size
    c = pre.crop
    left, top = {"tl": (0, 0), "tr": (w - c, 0), "bl": (0, h - c), "br": (w - c, h - c)}.get(
        view, ((w - c) // 2, (h - c) // 2))
    im = im.crop((left, top, left + c, top + c))
    if view == "flip":
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(im, dtype=np.float32)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_images(paths, pre: Preprocess, views=("center",)) -> np.ndarray:
    """A stack (N, C, H, W) of every path under every view."""
    return np.stack([load_image(p, pre, v) for p in paths for v in views])


@dataclass(frozen=True)
class LabelledSet:
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    source: str


def load_labelled(folder: str | Path, what: str = "evaluation folder") -> LabelledSet:
    """A labelled evaluation set: a folder with `labels.csv` (file,class_index[,...]; rows with a
    negative index are skipped) and an `images/` subfolder or the files beside it, or an
    ImageFolder tree (one subfolder per class; numeric names are class indices, otherwise the
    sorted folder names give the indices, as torchvision's ImageFolder does). `what` names the
    folder in error messages."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} {folder} does not exist; pass an ImageFolder tree "
                        f"or a folder with labels.csv")
    csv_path = folder / "labels.csv"
    if csv_path.exists():
        base = folder / "images" if (folder / "images").is_dir() else folder
        paths, labels = [], []
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    idx = int(row.get("class_index", row.get("label", "")))
                    name = row["file"]
                except (KeyError, ValueError):
                    raise UserError(f"{csv_path} must have columns file,class_index") from None
                if idx >= 0:
                    paths.append(base / name)
                    labels.append(idx)
    else:
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        numeric = all(c.isdigit() for c in classes)
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
    return LabelledSet(tuple(paths), tuple(labels), str(folder))


def load_array(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """Calibration samples saved as .npy, (N, C, H, W) float32 already preprocessed."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read calibration array {path}: {e}") from None
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape[1:]):
        raise UserError(f"calibration array {path} has shape {x.shape}; expected (N, "
                        f"{', '.join(map(str, shape[1:]))}), preprocessed like the model's input")
    return x.astype(np.float32)


def hash_names(names) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(str(n).encode() + b"\n")
    return h.hexdigest()[:16]
