"""BuildConfig: one frozen, self-validating description of a build, serialisable to JSON (it is
recorded in every manifest, and `edge verify` reads it back)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edge.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")
IO_TYPES = ("float", "int8")
BUDGET_KEYS = ("max_abs", "min_cosine", "min_top1_agreement", "min_top5_overlap", "max_top1_drop")


@dataclass(frozen=True)
class BuildConfig:
    model: str = "efficientnet_lite0"
    targets: tuple[str, ...] = ("tflite",)
    precision: str = "fp32"
    weights: str = "imagenet"
    out: str = "out"
    calib: str | None = None
    calib_method: str | None = None  # None: each target's own best method
    eval: str | None = None
    io: str = "float"
    input_shape: tuple[int, ...] | None = None
    budget: dict[str, float] = field(default_factory=dict)  # overrides of the model's budgets
    opset: int = 17
    # Quantization-aware training (int8 only); None: the recipe's default (edge.quantize.qat)
    qat: bool = False
    train: str | None = None  # labelled training images; without it, distillation on the calibration set
    epochs: int | None = None
    lr: float | None = None
    max_steps: int | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.io not in IO_TYPES:
            raise UserError(f"--io must be one of {', '.join(IO_TYPES)}, not {self.io!r}")
        if self.io == "int8" and self.precision != "int8":
            raise UserError("--io int8 needs an int8 model; add --int8 or use --io float")
        if self.calib_method is not None and self.precision != "int8":
            raise UserError("--calib-method only applies to --int8 builds")
        if not self.targets:
            raise UserError("no target given; pass --target NAME or --target all")
        unknown = set(self.budget) - set(BUDGET_KEYS)
        if unknown:
            raise UserError(f"unknown budget {', '.join(sorted(unknown))}; known: {', '.join(BUDGET_KEYS)}")
        for k, v in self.budget.items():
            if not isinstance(v, (int, float)) or v < 0:
                raise UserError(f"budget {k} must be a non-negative number, not {v!r}")
        if not 11 <= self.opset <= 21:
            raise UserError(f"--opset {self.opset} is outside the supported range 11-21")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "targets", tuple(self.targets))
        self._check_qat()

    def _check_qat(self) -> None:
        if not self.qat:
            given = [f"--{k.replace('_', '-')}" for k in ("train", "epochs", "lr", "max_steps")
                     if getattr(self, k) is not None]
            if given:
                raise UserError(f"{', '.join(given)} only apply to quantization-aware training; add --qat")
            return
        if self.precision != "int8":
            raise UserError("--qat trains for int8; add --int8")
        for k in ("epochs", "max_steps"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UserError(f"--{k.replace('_', '-')} must be a positive whole number, not {v!r}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not 0 < self.lr < float("inf")):
            raise UserError(f"--lr must be a positive number, not {self.lr!r}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "BuildConfig":
        d = dict(d)
        d["targets"] = tuple(d.get("targets", ()))
        if d.get("input_shape"):
            d["input_shape"] = tuple(d["input_shape"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
