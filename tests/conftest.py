"""Shared fixtures. Tests are offline: models without offline weights get random weights whose
batch-norm statistics are re-estimated on the built-in photos, so their outputs have a real
spread (plain random init gives near-constant logits that no parity check can judge)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.models import MODELS, load_model
from edge.models.loading import random_bn_recalibrated_state

SHARED = Path(os.environ.get("EDGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGENET_SAMPLE = SHARED / "imagenet-sample"


def small_shape(spec) -> tuple[int, ...]:
    """The first input's shape for fast builds: an image model that can be resized at about half its
    size (a square one at 64, or its minimum), keeping its aspect; any other model at its own shape."""
    shape = tuple(spec.inputs[0].shape)
    if spec.image is None or not spec.resizable:
        return shape
    h, w = shape[-2:]
    if h == w:
        return (*shape[:-2], *(2 * (min(h, max(spec.min_input_size, 64)),)))
    k = max(spec.min_input_size / min(h, w), 0.5)
    return (*shape[:-2], round(h * k), round(w * k))


def small_size(spec) -> int:
    """The side of a square image model's small shape (see small_shape)."""
    return small_shape(spec)[-1]


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """weights_file(model_name, size or shape) -> path of a state dict that fits that model."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("weights")

    def make(name: str, size) -> str:
        key = (name, size if isinstance(size, int) else tuple(size))
        if key not in cache:
            path = root / f"{name}-{'x'.join(map(str, key[1:]))}.pt"
            torch.save(random_bn_recalibrated_state(MODELS.get(name), size), path)
            cache[key] = str(path)
        return cache[key]
    return make


def offline_weights(name: str) -> bool:
    w = MODELS.get(name).weights
    return bool(w and w.locate())


@pytest.fixture
def imagenet_sample() -> Path:
    if not (IMAGENET_SAMPLE / "labels.csv").exists():
        pytest.skip(f"real-data check: {IMAGENET_SAMPLE} is absent (it is provided beside the repository)")
    return IMAGENET_SAMPLE


@pytest.fixture
def rng():
    return np.random.default_rng(0)


DIGITS_EPOCHS = 30


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict:
    """The digits CNN trained on 70% of scikit-learn's digits (seconds), its state dict, and .npz
    files: calibration (training digits) and evaluation (the held-back 30%, with labels)."""
    pytest.importorskip("sklearn")
    from edge.models.digits import load_digits

    d = tmp_path_factory.mktemp("digits")
    xtr, ytr, xte, yte = load_digits()
    torch.manual_seed(0)
    model = MODELS.get("digits_cnn").build().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(DIGITS_EPOCHS):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    torch.save(model.state_dict(), d / "digits.pt")
    np.savez(d / "calib.npz", pixels=xtr[:400])
    np.savez(d / "eval.npz", pixels=xte, labels=yte)
    np.savez(d / "train.npz", pixels=xtr, labels=ytr)
    upper, upper_te = ytr >= 5, yte >= 5  # a five-class task (the digits 5-9) to fine-tune to
    np.savez(d / "train5.npz", pixels=xtr[upper], labels=ytr[upper])
    np.savez(d / "eval5.npz", pixels=xte[upper_te], labels=yte[upper_te])
    return {"weights": str(d / "digits.pt"), "calib": str(d / "calib.npz"), "eval": str(d / "eval.npz"),
            "train": str(d / "train.npz"), "train5": str(d / "train5.npz"), "eval5": str(d / "eval5.npz"),
            "n_eval": len(xte), "dir": d}
