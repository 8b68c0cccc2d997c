"""The quantizer layer. A quantizer is one way of making an int8 model, asked for by the targets
that use it (a target names its quantizer; it does not own the code), in three steps shared by
post-training quantization and QAT:

    prepared = q.prepare(model_or_graph, ...)   # observers (PTQ) or fake quantization (QAT)
    q.calibrate(prepared, samples)              # PTQ: record ranges;  QAT: train instead
    artifact = q.convert(prepared, ...)         # the same convert for both

`applies_to` says where in a target's export it runs: "module" (on the nn.Module before export:
torch.ao FX for the lite interpreter, PT2E for ExecuTorch), "graph" (on the exported ONNX graph:
onnxruntime's static quantization) or "converter" (inside the target's converter: the TFLite
converter's representative dataset). `trainable` quantizers can prepare a module for QAT.

This module imports no torch: `edge targets` lists the quantizers without loading them."""
from __future__ import annotations

from edge.registry import Registry


class Quantizer:
    name: str
    applies_to: str  # "module", "graph" or "converter"
    methods: tuple[str, ...]  # calibration methods; the first is the default
    trainable: bool = False  # prepare_qat + train + the same convert
    description: str = ""

    def method(self, method: str | None) -> str:
        from edge.errors import UserError

        if method is None:
            return self.methods[0]
        if method not in self.methods:
            raise UserError(f"unknown calibration method {method!r} for {self.name}; choose one of: "
                            f"{', '.join(self.methods)}")
        return method


QUANTIZERS: Registry[Quantizer] = Registry("quantizer", "edge targets")


def register_quantizer(q: Quantizer) -> Quantizer:
    return QUANTIZERS.add(q.name, q)
