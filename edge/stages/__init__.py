"""The build's stages (edge/stages/base.py explains them). Adding a stage: one file that calls
`register_stage`, plus one import here."""
from edge.stages.base import STAGES, ArtifactState, BuildState, Stage, StageConfig, register_stage  # noqa: F401
from edge.stages import load, finetune, prune, distill, reference, qat, quantize, export, check, fallback, publish  # noqa: F401  (registration)

__all__ = ["STAGES", "ArtifactState", "BuildState", "Stage", "StageConfig", "register_stage"]
