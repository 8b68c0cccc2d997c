"""quantize (int8): the target's quantizer prepares and calibrates, where it applies: observers on
the nn.Module (fx-qnnpack; with QAT, the trained fake-quant model), statistics of the exported ONNX
graph (ort-static), or the converter's settings and representative dataset (tflite-converter).
The export stage then converts what this stage prepared."""
from __future__ import annotations

from edge.stages.base import ArtifactState, BuildState, Stage, register_stage


class Quantize(Stage):
    name = "quantize"
    scope = "artifact"
    order = 50

    def enabled(self, state: BuildState, artifact: ArtifactState | None = None) -> bool:
        return state.config.precision == "int8"

    def run(self, state: BuildState, artifact: ArtifactState) -> dict:
        q = artifact.target.get_quantizer()
        artifact.prepared = artifact.target.quantize(state.ctx)
        return {"quantizer": q.name, "applies_to": q.applies_to, "description": q.description,
                "method": "qat" if state.qat is not None and q.trainable else q.method(state.config.calib_method),
                "samples": len(state.calib), "from_qat": state.qat is not None}


register_stage(Quantize())
