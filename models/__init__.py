"""The model registry. Adding a model: one file that calls `register_model`, plus its module name
in FAMILIES (edge/models/spec.py); the registry imports the model files on first use."""
from edge.models.spec import FAMILIES, MODELS, ModelSpec, Weights, image_classifier, register_model  # noqa: F401
from edge.tensors import InputSpec, OutputSpec, Preprocess  # noqa: F401


def load_model(*args, **kwargs):
    """edge.models.loading.load_model (imported on first use: it needs torch)."""
    from edge.models.loading import load_model as _load

    return _load(*args, **kwargs)


def resolve_model(*args, **kwargs):
    """edge.models.loading.resolve_model (imported on first use: it needs torch)."""
    from edge.models.loading import resolve_model as _resolve

    return _resolve(*args, **kwargs)


__all__ = ["FAMILIES", "MODELS", "ModelSpec", "Weights", "image_classifier", "register_model", "InputSpec",
           "OutputSpec", "Preprocess", "load_model", "resolve_model"]
