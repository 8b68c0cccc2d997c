"""The TFLite converter's own post-training quantization: the "tflite-converter" quantizer of the
quantizer layer (edge.quantize.base), which the tflite target asks for. It runs inside the
converter: `prepare` fixes the settings, `calibrate` hands over the samples (the converter's
representative dataset, which it calibrates on itself, min/max per tensor), and `convert`
applies both to a TFLiteConverter in the conversion process and returns the flatbuffer.
Selective quantization (--max-drop) leaves the denylisted ops in float through the converter's
quantization debugger."""
from __future__ import annotations

from dataclasses import dataclass, field

from edge.quantize.base import Quantizer, register_quantizer


@dataclass
class ConverterSettings:
    io: str = "float"  # "int8": int8 input and output tensors
    keep_float: list[str] = field(default_factory=list)  # TF tensor names whose ops stay in float
    calib: str | None = None  # an .npz of the samples, one array per converter input, in its layout

    def to_json(self) -> dict:
        return {"io": self.io, "keep_float": list(self.keep_float), "calib": self.calib}


class TFLiteConverterQuantizer(Quantizer):
    name = "tflite-converter"
    applies_to = "converter"
    # The TFLite converter's calibrator records each tensor's min and max over the representative
    # dataset; it offers no other method.
    methods = ("minmax",)
    description = "tf.lite.TFLiteConverter full-integer quantization, per-channel weights, min/max ranges"

    def prepare(self, io: str = "float", keep_float=()) -> ConverterSettings:
        return ConverterSettings(io, list(keep_float))

    def calibrate(self, settings: ConverterSettings, samples_npz: str) -> None:
        settings.calib = samples_npz

    def convert(self, converter, settings: dict, input_order: list[str]) -> bytes:
        """Quantize inside `converter` (a tf.lite.TFLiteConverter) and return the flatbuffer."""
        import numpy as np
        import tensorflow as tf

        calib = np.load(settings["calib"])
        n = len(calib[input_order[0]])

        def representative():
            # By name for several inputs: a list would be fed in the interpreter's tensor order,
            # which need not be the model's (a frame then went into a sensor input and broke PAD).
            for i in range(n):
                if len(input_order) == 1:
                    yield [tf.constant(calib[input_order[0]][i:i + 1])]
                else:
                    yield {name: tf.constant(calib[name][i:i + 1]) for name in input_order}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if settings["io"] == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if not settings["keep_float"]:
            return converter.convert()
        # Selective quantization (--max-drop): the converter's quantization debugger leaves the ops
        # that write these tensors in float, with Quantize/Dequantize around them.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=settings["keep_float"])
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative,
                                                             debug_options=options)
        return debugger.get_nondebug_quantized_model()


register_quantizer(TFLiteConverterQuantizer())
