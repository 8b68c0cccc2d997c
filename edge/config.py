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
