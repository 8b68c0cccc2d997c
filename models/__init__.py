"""The model registry. Adding a model: one file that calls `register_model`, plus one import here."""
from edge.models.spec import MODELS, ModelSpec, Preprocess, Weights, register_model  # noqa: F401
from edge.models import efficientnet_lite, tiny, torchvision_zoo  # noqa: F401  (registration)
from edge.models.loading import load_model, resolve_model  # noqa: F401

__all__ = ["MODELS", "ModelSpec", "Preprocess", "Weights", "register_model", "load_model", "resolve_model"]
