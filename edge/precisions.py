"""The precision registry: each precision carries its parity budgets, per task family.

Budget keys (what the parity check compares; edge/parity.py):
  max_abs             largest absolute output difference (classification logits, fp32/fp16)
  max_rel_abs         largest absolute difference relative to the reference output's largest magnitude (dense)
  min_cosine          smallest per-sample output cosine (fp32/fp16: the minimum; int8: the mean)
  min_sqnr_db         smallest SQNR of the output, 10 log10(|ref|^2 / |out - ref|^2), over all samples
  min_top1_agreement  int8 classification: top-1 agreement with fp32 (0-1)
  min_top5_overlap    int8 classification: top-5 overlap with fp32 (0-1)
  max_top1_drop       int8 classification with labelled data: top-1 drop in percentage points
A ModelSpec may override any of them per precision; the command line may too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edge.registry import Registry

# (lowest, highest) each budget may take; anything else (or NaN) is refused before a build starts
BUDGET_RANGES: dict[str, tuple[float, float]] = {
    "max_abs": (0.0, math.inf), "max_rel_abs": (0.0, math.inf), "min_cosine": (-1.0, 1.0),
    "min_sqnr_db": (-math.inf, math.inf), "min_top1_agreement": (0.0, 1.0), "min_top5_overlap": (0.0, 1.0),
    "max_top1_drop": (0.0, 100.0),
}
BUDGET_KEYS = tuple(BUDGET_RANGES)
# What random weights can be judged on: top-1 agreement between two sets of logits of a network
# that knows nothing is noise, while how closely the artifact reproduces those logits is not.
RANDOM_WEIGHTS_KEYS = ("max_abs", "max_rel_abs", "min_cosine", "min_sqnr_db")


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    budgets: dict[str, dict[str, float]]  # "classification" / "dense" -> budget
    quantized: bool = False
    random_weights: dict[str, float] | None = None  # the budget of a random-weights build (None: dense)

    def budget(self, task: str) -> dict[str, float]:
        from edge.tensors import judged_as

        return dict(self.budgets[judged_as(task)])


PRECISIONS: Registry[Precision] = Registry("precision", "--precision")

PRECISIONS.add("fp32", Precision("fp32", "32-bit float: the exported graph as it is", {
    "classification": {"max_abs": 1e-3, "min_cosine": 0.99999},
    "dense": {"max_rel_abs": 1e-3, "min_cosine": 0.99999},
}))
PRECISIONS.add("fp16", Precision("fp16", "16-bit float weights", {
    "classification": {"max_abs": 5e-2, "min_cosine": 0.999},
    "dense": {"max_rel_abs": 5e-2, "min_cosine": 0.999},
}))
# Top-1 agreement on a few unlabelled samples is coarse (inputs near a decision boundary flip on
# any perturbation): EfficientNet-Lite0, calibrated on the built-in photos, agrees on 14-16 of 18
# held-out crops at a cosine of 0.99. The accuracy criterion proper is the top-1 drop, measured
# when labelled data is given (--eval). A dense int8 output at cosine 0.95 keeps about 10 dB SQNR.
# With random weights, int8 loses more than with trained ones (nothing keeps the activations of a
# network that knows nothing in a narrow range): MobileNetV2 at 96 px agrees with PyTorch at a
# cosine of 0.888-0.896 and 6.2-6.8 dB in all three runtimes, and the build matrix measured
# 0.78-0.90 over every registered model and target; a broken artifact (wrong layout, bad scales)
# falls far below 0.7 (3 dB).
PRECISIONS.add("int8", Precision("int8", "8-bit integer weights and activations (post-training or QAT)", {
    "classification": {"min_top1_agreement": 0.70, "min_top5_overlap": 0.70, "min_cosine": 0.95,
                       "max_top1_drop": 1.0},
    "dense": {"min_cosine": 0.95, "min_sqnr_db": 10.0},
}, quantized=True, random_weights={"min_cosine": 0.7, "min_sqnr_db": 3.0}))


def check_budget(budget: dict) -> None:
    """UserError for an unknown key, a value that is not a number, NaN, or out of its range."""
    from edge.errors import UserError

    unknown = set(budget) - set(BUDGET_KEYS)
    if unknown:
        raise UserError(f"unknown budget {', '.join(sorted(unknown))}; known: {', '.join(BUDGET_KEYS)}")
    for k, v in budget.items():
        lo, hi = BUDGET_RANGES[k]
        flag = "--" + ("max-drop" if k == "max_top1_drop" else k.replace("_", "-"))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise UserError(f"{flag} must be a number, not {v!r}")
        if not lo <= v <= hi or math.isinf(v):
            allowed = "a non-negative finite number" if (lo, hi) == (0.0, math.inf) else \
                "a finite number" if math.isinf(lo) else f"a number from {lo:g} to {hi:g}"
            raise UserError(f"{flag} {v:g} is out of range: it must be {allowed}")
