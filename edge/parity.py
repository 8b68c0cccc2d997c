"""Parity: an artifact, run in its own runtime, against the PyTorch fp32 reference.

As in optimum's exporters, names and shapes are checked before values, every failure is
collected, and each one says by how much the budget was missed. Failures are errors, never
warnings."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ParityReport:
    precision: str
    samples: int
    sample_source: str
    budget: dict[str, float]
    figures: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {"passed": self.passed, "precision": self.precision, "samples": self.samples,
                "sample_source": self.sample_source, "budget": self.budget,
                **{k: _round(v) for k, v in self.figures.items()}, "failures": self.failures}


def _round(v):
    return float(f"{float(v):.6g}") if isinstance(v, (float, np.floating)) else v


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of flattened outputs."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-300), 1.0)


def topk(y: np.ndarray, k: int) -> np.ndarray:
    """The k highest classes per sample, best first; equal scores in class order, as argmax breaks
    them. int8 outputs often tie (a few in a hundred photos at the top on EfficientNet-Lite0), and an
    unstable sort would break each tie at random, moving top-1 by tenths of a point."""
    return np.argsort(-y.reshape(len(y), -1), axis=1, kind="stable")[:, :k]


def top1_ties(y: np.ndarray) -> int:
    """How many samples have two or more classes sharing the highest score."""
    y = y.reshape(len(y), -1)
    return int(((y == y.max(1, keepdims=True)).sum(1) > 1).sum())


def accuracy(y: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(top-1, top-5) in percent."""
    t5 = topk(y, 5)
    return (100.0 * float((t5[:, 0] == labels).mean()), 100.0 * float((t5 == labels[:, None]).any(1).mean()))


def compare(ref: np.ndarray, out: np.ndarray, precision: str, budget: dict[str, float], source: str,
            labels: np.ndarray | None = None) -> ParityReport:
    """Compare artifact outputs `out` with reference outputs `ref` on the same samples."""
    r = ParityReport(precision, int(len(ref)), source, dict(budget))
    if out.shape != ref.shape:
        r.failures.append(f"output shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
        return r
    if not np.isfinite(out).all():
        r.failures.append("the artifact produced NaN or infinite outputs")
        return r
    cos = cosine(ref, out)
    f = r.figures
    f["max_abs_diff"] = float(np.abs(ref - out).max())
    f["mean_abs_diff"] = float(np.abs(ref - out).mean())
    f["min_cosine"], f["mean_cosine"] = float(cos.min()), float(cos.mean())
    classifier = ref.ndim == 2 and ref.shape[1] >= 5
    if classifier:
        f["top1_agreement"] = float((topk(ref, 1)[:, 0] == topk(out, 1)[:, 0]).mean())
        t5r, t5o = topk(ref, 5), topk(out, 5)
        f["top5_overlap"] = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(t5r, t5o)]))
        f["top1_ties"] = top1_ties(out)
    if labels is not None and classifier:
        f["reference_top1"], f["reference_top5"] = accuracy(ref, labels)
        f["top1"], f["top5"] = accuracy(out, labels)
        f["top1_drop_pp"] = f["reference_top1"] - f["top1"]
    _judge(r, classifier)
    return r


def _judge(r: ParityReport, classifier: bool) -> None:
    f, b = r.figures, r.budget
    # (figure, budget key, True when the figure must stay at or below the budget)
    rules = [("max_abs_diff", "max_abs", True)]
    if r.precision == "int8":
        rules = [("mean_cosine", "min_cosine", False)]
        if classifier:
            rules += [("top1_agreement", "min_top1_agreement", False), ("top5_overlap", "min_top5_overlap", False)]
        if "top1_drop_pp" in f:
            rules.append(("top1_drop_pp", "max_top1_drop", True))
    else:
        rules.append(("min_cosine", "min_cosine", False))
    for fig, key, upper in rules:
        if key not in b or fig not in f:
            continue
        v, lim = f[fig], b[key]
        if (v > lim) if upper else (v < lim):
            by = v - lim if upper else lim - v
            r.failures.append(f"{fig} {v:.6g} {'above' if upper else 'below'} budget {lim:g} (missed by {by:.3g})")
