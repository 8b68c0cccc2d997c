"""The target registry. Adding a target: one file that calls `register_target`, one import here,
and one optional-dependency entry in pyproject.toml."""
from edge.targets.base import PRECISIONS, TARGETS, ExportContext, Exported, Target, TensorSpec  # noqa: F401
from edge.targets import torchscript_mobile, onnx, tflite, executorch  # noqa: F401  (registration)
