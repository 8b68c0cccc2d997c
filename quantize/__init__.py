"""Quantization: the quantizer layer (a registry of ways to make int8 models, which targets ask for),
calibration sets, QAT and per-layer sensitivity. Adding a quantizer: one file that calls
`register_quantizer`, plus one import here."""
from edge.quantize.base import QUANTIZERS, Quantizer, register_quantizer  # noqa: F401
from edge.quantize import onnx_ptq, pt2e_xnnpack, tflite_converter, torch_ptq  # noqa: F401  (registration)

__all__ = ["QUANTIZERS", "Quantizer", "register_quantizer"]
