"""BuildConfig: one frozen, self-validating description of a build, serialisable to JSON (it is
recorded in every manifest, and `edge verify` reads it back).

Its own fields say what to build from what data; the options of the optional stages (QAT today;
pruning or distillation tomorrow) belong to those stages' own configs (edge.stages), which
BuildConfig routes keywords to by name: `BuildConfig(model="tiny", precision="int8", qat=True,
epochs=2)` fills the qat stage's config. In JSON every option sits at the top level, as on the
command line."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from edge.errors import UserError
from edge.precisions import PRECISIONS, check_budget
from edge.tensors import check_size

IO_TYPES = ("float", "int8")
OPSETS = (11, 21)


@dataclass(frozen=True, init=False)
class BuildConfig:
    model: str = "efficientnet_lite0"
    targets: tuple[str, ...] = ("tflite",)
    precision: str = "fp32"
    weights: str = "imagenet"
    out: str = "out"
    calib: str | None = None  # a folder of images, an .npy (one input) or an .npz (one array per input)
    calib_method: str | None = None  # None: each target's quantizer's own default
    eval: str | None = None  # labelled images, or an .npz with one array per input and `labels`
    train: str | None = None  # labelled training data for the stages that train (--qat)
    io: str = "float"
    input_shape: tuple | None = None  # the first input's shape, or one shape per input
    tasks: Mapping[str, str] = field(default_factory=dict)  # output name ("" = every output) -> task
    budget: Mapping[str, float] = field(default_factory=dict)  # overrides of the model's budgets
    opset: int = 17
    stages: Mapping[str, Any] = field(default_factory=dict)  # optional stage name -> its config

    def __init__(self, **options):
        from edge.stages import STAGES

        own = {f.name: f for f in dataclasses.fields(self)}
        for name, f in own.items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            object.__setattr__(self, name, options.pop(name, default))
        stages = dict(self.stages)
        for stage in STAGES.configurable():
            given = {k: options.pop(k) for k in stage.Config.options() if k in options}
            if given or stage.name not in stages:
                base = stages.get(stage.name)
                stages[stage.name] = dataclasses.replace(base, **given) if base else stage.Config(**given)
        if options:
            raise UserError(f"unknown build option {', '.join(sorted(options))}")
        object.__setattr__(self, "stages", stages)
        self._validate()

    def _validate(self) -> None:
        from edge.stages import STAGES

        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS.names())}")
        if self.io not in IO_TYPES:
            raise UserError(f"--io must be one of {', '.join(IO_TYPES)}, not {self.io!r}")
        if self.io == "int8" and self.precision != "int8":
            raise UserError("--io int8 needs an int8 model; add --int8 or use --io float")
        if self.calib_method is not None and self.precision != "int8":
            raise UserError("--calib-method only applies to --int8 builds")
        if not self.targets:
            raise UserError("no target given; pass --target NAME or --target all")
        object.__setattr__(self, "budget", dict(self.budget))
        check_budget(self.budget)
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise UserError(f"--opset {self.opset} is outside the supported range {OPSETS[0]}-{OPSETS[1]}")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", _shape_tuple(self.input_shape))
            shapes = self.input_shape if isinstance(self.input_shape[0], tuple) else (self.input_shape,)
            for s in shapes:  # refused before a build starts, not when memory runs out
                check_size(s, "--input-shape")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "tasks", dict(self.tasks))
        for stage in STAGES.configurable():
            self.stages[stage.name].validate(self)
        if self.train is not None and not any(c.enabled() and c.uses_train for c in self.stages.values()):
            users = [f"--{s.name}" for s in STAGES.configurable() if s.Config.uses_train]
            raise UserError(f"--train gives training data to {' or '.join(users)}; add one of them")

    def stage(self, name: str):
        """The config of an optional stage."""
        return self.stages[name]

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "stages"}
        d["targets"] = list(self.targets)
        d["input_shape"] = _shape_json(self.input_shape)
        d["budget"], d["tasks"] = dict(self.budget), dict(self.tasks)
        for c in self.stages.values():
            d.update(c.to_json())
        return d

    @classmethod
    def from_json(cls, d: dict) -> "BuildConfig":
        """The config a manifest records (older manifests lack newer options: their defaults apply)."""
        from edge.stages import STAGES

        known = {f.name for f in dataclasses.fields(cls)} - {"stages"}
        known |= {k for s in STAGES.configurable() for k in s.Config.options()}
        d = {k: v for k, v in dict(d).items() if k in known}
        d["targets"] = tuple(d.get("targets", ()))
        if d.get("input_shape"):
            d["input_shape"] = _shape_tuple(d["input_shape"])
        return cls(**d)

    def __eq__(self, other) -> bool:
        return isinstance(other, BuildConfig) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_json().items(), key=lambda kv: kv[0])))


def _shape_tuple(s) -> tuple:
    """(1, 3, 224, 224) for one shape, ((1, 8), (1, 8)) for one per input."""
    s = tuple(s)
    if s and all(isinstance(d, (list, tuple)) for d in s):
        return tuple(tuple(int(x) for x in d) for d in s)
    try:
        return tuple(int(d) for d in s)
    except (TypeError, ValueError):
        raise UserError(f"--input-shape {s!r} is not a shape like 1,3,224,224") from None


def _shape_json(s):
    if s is None:
        return None
    return [list(d) for d in s] if s and isinstance(s[0], tuple) else list(s)


def positive_int(v, flag: str) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise UserError(f"{flag} must be a positive whole number, not {v!r}")


def positive_float(v, flag: str) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
        raise UserError(f"{flag} must be a positive number, not {v!r}")


def epochs_value(v, flag: str) -> None:
    """A number of passes over the training samples: 0 (none) to 1000, fractions allowed."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1000):
        raise UserError(f"{flag} must be a number from 0 to 1000, not {v!r}")
