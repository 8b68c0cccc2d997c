"""Stages: a build is a list of them, run in order, each with its own small frozen config.

    load -> [train/distill ...] -> [qat] -> quantize -> export -> check -> [fallback] -> publish
    (model scope: once per build)         (artifact scope: once per target)          (build scope)

A model-scope stage changes the network every target starts from (QAT; later fine-tuning,
pruning, distillation); an artifact-scope stage works on one target's artifact; publish puts the
verified artifacts in place. A stage with options declares them as a `StageConfig` (its fields
are the build options, keywords of edge.build and flags of `edge build`) and adds its own
command-line flags, so a new stage is one new file plus one line in edge/stages/__init__.py.
The manifest records every stage that ran, with its settings and what it reported.

This module imports no torch (the command line's --help lists the stages' flags)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edge.registry import Registry

if TYPE_CHECKING:
    import argparse

    from edge.config import BuildConfig
    from edge.data import Samples
    from edge.models.spec import ModelSpec
    from edge.parity import ParityReport
    from edge.targets.base import ExportContext, Exported, Target

SCOPES = ("model", "artifact", "build")


@dataclass(frozen=True)
class StageConfig:
    """Base of stage configs: frozen dataclasses whose fields are build options."""

    uses_train: ClassVar[bool] = False  # the stage trains on --train data when given

    @classmethod
    def options(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def enabled(self) -> bool:
        return True

    def validate(self, build: "BuildConfig") -> None:
        """Raise UserError for options that do not fit each other or the build."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Stage:
    """Base of every stage. `run` returns a record for the manifest (None: nothing to record)."""

    name: str
    scope: str  # "model", "artifact" or "build"
    order: int  # position in the pipeline (model stages 10-49, artifact 50-89, publish 90)
    Config: type[StageConfig] | None = None

    def add_arguments(self, parser: "argparse.ArgumentParser") -> None:
        """The stage's own `edge build` flags (dest = its Config's field names)."""

    def enabled(self, state: "BuildState", artifact: "ArtifactState | None" = None) -> bool:
        return self.Config is None or state.config.stage(self.name).enabled()

    def run(self, state: "BuildState", artifact: "ArtifactState | None" = None) -> dict | None:
        raise NotImplementedError


class StageRegistry(Registry[Stage]):
    def in_order(self, scope: str) -> list[Stage]:
        return sorted((s for s in self if s.scope == scope), key=lambda s: s.order)

    def configurable(self) -> list[Stage]:
        return [s for s in self if s.Config is not None]


STAGES = StageRegistry("stage", "edge build --help")


def register_stage(stage: Stage) -> Stage:
    if stage.scope not in SCOPES:
        raise ValueError(f"stage {stage.name}: scope must be one of {SCOPES}")
    clash = {o for s in STAGES.configurable() for o in s.Config.options()} & set(
        stage.Config.options() if stage.Config else ())
    if clash:
        raise ValueError(f"stage {stage.name}: options {sorted(clash)} belong to another stage")
    return STAGES.add(stage.name, stage)


@dataclass
class Check:
    """The samples artifacts are checked on, with the reference's outputs on them."""

    samples: "Samples"
    reference: dict  # output name -> (N, ...) float32
    source: str

    @property
    def labels(self):
        return self.samples.labels


@dataclass
class ArtifactState:
    """One target's artifact as it moves through the artifact-scope stages."""

    target: "Target"
    path: Path  # in the staging folder
    prepared: Any = None  # what the quantize stage prepared and calibrated, for export to convert
    exported: "Exported | None" = None
    runner: Any = None
    report: "ParityReport | None" = None
    ms_per_sample: float | None = None
    fallback: dict | None = None
    seconds: float = 0.0
    records: list[dict] = field(default_factory=list)
    error: str | None = None  # why its conversion failed (the other targets carry on)

    @property
    def passed(self) -> bool:
        return self.error is None and self.report is not None and self.report.passed


@dataclass
class BuildState:
    """What the stages share: filled by load, changed by model-scope stages, read by the rest."""

    config: "BuildConfig"
    out: Path
    staging: Path | None = None
    spec: "ModelSpec | None" = None
    reference: Any = None  # the original fp32 nn.Module, what parity compares against
    model: Any = None  # the network the targets export (after training stages)
    calib: "Samples | None" = None
    check: Check | None = None
    budgets: dict = field(default_factory=dict)  # output name -> budget
    judged_on: str | None = None
    ctx: "ExportContext | None" = None
    qat: Any = None  # edge.quantize.qat.QATResult
    teacher: Any = None  # the network before pruning, which distillation learns from
    recovery: Any = None  # how the pruned network trains back (edge.pruning.Recovery), set by prune
    reshaped: list[str] = field(default_factory=list)  # stages that changed the network's shape or head
    _train: Any = None  # the training samples, loaded once for every stage that trains
    inputs_record: dict = field(default_factory=dict)  # provenance of model file / weights, for the manifest
    records: list[dict] = field(default_factory=list)  # model-scope stage records
    artifacts: list[ArtifactState] = field(default_factory=list)
    published: list[dict] = field(default_factory=list)  # the manifests publish wrote

    def training_data(self):
        """--train's samples (labelled), else the calibration samples (unlabelled): edge.training.TrainSet."""
        from edge.training import training_set

        if self._train is None:
            self._train = training_set(self.config.train, self.calib, self.spec)
        return self._train

    def set_network(self, model, stage: str, spec=None) -> None:
        """A model-scope stage's result becomes what the targets export and what they are checked
        against (QAT does not come here: its artifacts are judged against the float network)."""
        from dataclasses import replace

        self.model = self.reference = model
        if spec is not None:
            self.spec = spec
        self.ctx = replace(self.ctx, model=model, spec=self.spec)
        self.reshaped.append(stage)
