"""Parity: an artifact, run in its own runtime, against the PyTorch fp32 reference, output by output.

Each output is judged by what it is (its task, edge.tensors): classification logits by top-1
agreement, top-5 overlap and cosine (and, with labelled data, the accuracy drop); dense outputs
(segmentation maps, detection heads, embeddings, regression) by cosine, SQNR in dB and the max-abs
difference relative to the output's range. Every figure is computed for every output; the budget
decides which ones are judged. As in optimum's exporters, names and shapes are checked before
values, every failure is collected, and each one says by how much the budget was missed.
Failures are errors, never warnings."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.tensors import judged_as

RANDOM_WEIGHTS_NOTE = ("random weights: every output is judged as a dense output (cosine, SQNR, relative "
                       "max-abs; int8 by the precision's random-weights budget); top-1 agreement between the "
                       "logits of a network that knows nothing is noise, so it is reported, not judged")


@dataclass
class OutputReport:
    name: str
    task: str
    budget: dict[str, float]
    figures: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"task": self.task, "budget": self.budget, **{k: _round(v) for k, v in self.figures.items()},
                "failures": self.failures}


@dataclass
class ParityReport:
    precision: str
    samples: int
    sample_source: str
    outputs: dict[str, OutputReport] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # failures not tied to one output (names, shapes)
    judged_on: str | None = None  # why the usual rules do not apply (random weights)

    @property
    def failures(self) -> list[str]:
        many = len(self.outputs) > 1
        return self.errors + [f"{o.name}: {f}" if many else f for o in self.outputs.values() for f in o.failures]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def figures(self) -> dict[str, float]:
        """The single output's figures (the first output's when there are several)."""
        return next(iter(self.outputs.values())).figures if self.outputs else {}

    @property
    def budget(self) -> dict[str, float]:
        return next(iter(self.outputs.values())).budget if self.outputs else {}

    def to_json(self) -> dict:
        d = {"passed": self.passed, "precision": self.precision, "samples": self.samples,
             "sample_source": self.sample_source}
        if len(self.outputs) == 1:  # the flat form single-output readers know
            d.update(budget=self.budget, **{k: _round(v) for k, v in self.figures.items()})
        d["outputs"] = {k: o.to_json() for k, o in self.outputs.items()}
        if self.judged_on:
            d["judged_on"] = self.judged_on
        d["failures"] = self.failures
        return d


def _round(v):
    """A figure for JSON: 6 significant digits; null where it is not finite (the SQNR of an output
    the artifact reproduces exactly is infinite), since JSON has no infinity or NaN."""
    if isinstance(v, (float, np.floating)):
        return float(f"{float(v):.6g}") if np.isfinite(v) else None
    return v


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of flattened outputs."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-300), 1.0)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """10 log10(|ref|^2 / |out - ref|^2) over all samples (inf when identical)."""
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


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


def can_judge(task: str, shape: tuple[int, ...]) -> str | None:
    """Why an output of this shape cannot be judged as `task` (None: it can)."""
    if task == "classification" and (len(shape) != 2 or shape[1] < 2):
        return (f"a classification output must be (N, classes) with at least 2 classes, not "
                f"{','.join(map(str, shape))}; mark it dense (--task NAME=dense)")
    return None


def _figures(ref: np.ndarray, out: np.ndarray, task: str, labels: np.ndarray | None) -> dict[str, float]:
    cos = cosine(ref, out)
    diff = np.abs(ref.astype(np.float64) - out)
    f = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
         "max_rel_abs": float(diff.max() / max(float(np.abs(ref).max()), 1e-30)),
         "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "sqnr_db": sqnr_db(ref, out)}
    if task == "classification":
        k = min(5, ref.shape[1])
        f["top1_agreement"] = float((topk(ref, 1)[:, 0] == topk(out, 1)[:, 0]).mean())
        t5r, t5o = topk(ref, k), topk(out, k)
        f["top5_overlap"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(t5r, t5o)]))
        f["top1_ties"] = top1_ties(out)
        if labels is not None:
            f["reference_top1"], f["reference_top5"] = accuracy(ref, labels)
            f["top1"], f["top5"] = accuracy(out, labels)
            f["top1_drop_pp"] = f["reference_top1"] - f["top1"]
    elif task == "segmentation" and ref.ndim >= 3 and ref.shape[1] >= 2:
        f["pixel_agreement"] = float((ref.argmax(1) == out.argmax(1)).mean())
    return f


# (figure, budget key, True when the figure must stay at or below the budget); int8 judges the
# mean cosine (a few hard samples are expected), float precisions the worst one.
RULES = {
    "float": [("max_abs_diff", "max_abs", True), ("max_rel_abs", "max_rel_abs", True),
              ("min_cosine", "min_cosine", False), ("sqnr_db", "min_sqnr_db", False)],
    "int8": [("mean_cosine", "min_cosine", False), ("sqnr_db", "min_sqnr_db", False),
             ("max_rel_abs", "max_rel_abs", True), ("max_abs_diff", "max_abs", True),
             ("top1_agreement", "min_top1_agreement", False), ("top5_overlap", "min_top5_overlap", False),
             ("top1_drop_pp", "max_top1_drop", True)],
}


def compare(ref: dict[str, np.ndarray] | np.ndarray, out: dict[str, np.ndarray] | np.ndarray, precision: str,
            budgets: dict[str, dict] | dict[str, float], source: str, labels: np.ndarray | None = None,
            tasks: dict[str, str] | None = None, judged_on: str | None = None) -> ParityReport:
    """Compare artifact outputs with reference outputs on the same samples, output by output.
    `budgets`: output name -> budget (or one budget for every output); `tasks`: output name -> task
    (default: classification). `labels` apply to classification outputs."""
    ref = ref if isinstance(ref, dict) else {"output": ref}
    out = out if isinstance(out, dict) else {next(iter(ref)): out}
    tasks = tasks or {}
    per_output = all(isinstance(v, dict) for v in budgets.values()) and set(budgets) >= set(ref) and bool(budgets)
    r = ParityReport(precision, int(len(next(iter(ref.values())))), source, judged_on=judged_on)
    missing, extra = sorted(set(ref) - set(out)), sorted(set(out) - set(ref))
    if missing or extra:
        r.errors.append(f"output names differ: missing {missing or 'none'}, unexpected {extra or 'none'}")
    for name, y_ref in ref.items():
        task = tasks.get(name, "classification")
        o = r.outputs[name] = OutputReport(name, task, dict(budgets[name] if per_output else budgets))
        if name not in out:
            continue
        y = out[name]
        if y.shape != y_ref.shape:
            o.failures.append(f"output shape {tuple(y.shape)} differs from the reference's {tuple(y_ref.shape)}")
            continue
        if not np.isfinite(y).all():
            o.failures.append("the artifact produced NaN or infinite outputs")
            continue
        o.figures = _figures(y_ref, y, task, labels if task == "classification" else None)
        _judge(o, precision)
    return r


def _judge(o: OutputReport, precision: str) -> None:
    f, b = o.figures, o.budget
    for fig, key, upper in RULES["int8" if precision == "int8" else "float"]:
        if key not in b or fig not in f:
            continue
        v, lim = f[fig], b[key]
        if (v > lim) if upper else (v < lim):
            by = v - lim if upper else lim - v
            o.failures.append(f"{fig} {v:.6g} {'above' if upper else 'below'} budget {lim:g} (missed by {by:.3g})")


def budget_for(spec, output, precision: str, overrides: dict, random_weights: bool) -> dict[str, float]:
    """The budget one output is judged by: its task's budget for this precision with the model's
    overrides (with random weights: the precision's random-weights budget, else the dense task's),
    then the user's."""
    from edge.precisions import PRECISIONS, RANDOM_WEIGHTS_KEYS

    task = "dense" if random_weights else output.task
    base = {**spec.budget(precision, task)}
    if random_weights:
        base = dict(PRECISIONS.get(precision).random_weights or base)
        base = {k: v for k, v in base.items() if k in RANDOM_WEIGHTS_KEYS}
    applicable = _keys(judged_as(task), precision)
    return {**base, **{k: v for k, v in overrides.items() if k in applicable}}


def _keys(family: str, precision: str) -> set[str]:
    keys = {k for _, k, _ in RULES["int8" if precision == "int8" else "float"]}
    if family == "dense":
        keys -= {"min_top1_agreement", "min_top5_overlap", "max_top1_drop"}
    return keys
