"""load: the model spec, the network with its weights, and the calibration and check samples.
The reference's outputs on the check samples, which every artifact is compared with, come later
(edge.stages.reference): the training stages may change the network first."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.stages.base import BuildState, Check, Stage, register_stage
from edge.targets.base import ExportContext

log = logging.getLogger("edge")
SMALL_CHECK = 50  # fewer held-out samples than this: say that --eval would check accuracy


class Load(Stage):
    name = "load"
    scope = "model"
    order = 10

    def run(self, state: BuildState, artifact=None) -> dict:
        from edge.models.loading import file_sha256, guarded, is_custom, load_model, resolve_model
        from edge.parity import RANDOM_WEIGHTS_NOTE, budget_for, can_judge
        from edge.quantize.calibration import calibration_and_parity, evaluation_set
        from edge.runner import TorchRunner

        cfg = state.config
        spec = resolve_model(cfg.model, cfg.input_shape, cfg.tasks)
        model = load_model(spec, cfg.weights)
        int8 = cfg.precision == "int8"
        # the stages that train without --train (pruning's distillation) learn on the calibration samples
        trains = cfg.train is None and any(c.enabled() and c.uses_train for c in cfg.stages.values())
        calib, parity = calibration_and_parity(cfg.calib, spec, int8 or trains, cfg.eval is not None)
        samples = evaluation_set(cfg.eval, spec) if cfg.eval else parity
        if cfg.eval is None and len(samples) < SMALL_CHECK:
            log.warning("parity is checked on %d held-out samples only; pass --eval (labelled data) for an "
                        "accuracy check", len(samples))
        with guarded(spec, "forward"):  # one sample: the outputs' shapes
            first = TorchRunner(model, spec).run(samples.head(1).arrays)
        spec = _with_output_shapes(spec, first)
        for o in spec.outputs:
            why = can_judge(o.task, o.shape)
            if why:
                raise UserError(f"output {o.name}: {why}")
        random = cfg.weights == "random"
        state.spec, state.reference, state.model, state.calib = spec, model, model, calib
        state.check = Check(samples, {}, samples.source)
        state.budgets = {o.name: budget_for(spec, o, cfg.precision, cfg.budget, random) for o in spec.outputs}
        state.judged_on = RANDOM_WEIGHTS_NOTE if random else None
        if is_custom(cfg.model):
            path = Path(cfg.model.rsplit(":", 1)[0])
            state.inputs_record["model_file"] = {"path": str(path), "sha256": file_sha256(path)}
        if cfg.weights not in ("imagenet", "random"):
            state.inputs_record["weights_sha256"] = file_sha256(cfg.weights)
        # what every target's export shares: the network, one real sample to trace with, the calibration set
        state.ctx = ExportContext(model, spec, state.staging, example=samples.head(1).arrays,
                                  calib=calib if int8 else None,
                                  calib_method=cfg.calib_method, io=cfg.io, opset=cfg.opset)
        return {"model": spec.name, "weights": cfg.weights, "inputs": [i.to_json() for i in spec.inputs],
                "outputs": [o.to_json() for o in spec.outputs], "check_samples": len(samples),
                "calibration_samples": len(calib) if calib is not None else 0}


def _with_output_shapes(spec, ref: dict[str, np.ndarray]):
    outputs = tuple(replace(o, shape=(1, *ref[o.name].shape[1:])) for o in spec.outputs)
    return replace(spec, outputs=outputs)


register_stage(Load())
