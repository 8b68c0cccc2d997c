"""qat: quantization-aware fine-tuning, once per build, before the exports (edge.quantize.qat).
"Prepare for training, train, the same convert": the trained fake-quant model is what the
module quantizer of a target converts (the .ptl keeps the learned ranges); its fine-tuned float
network, BN folded and weights on their int8 levels, is what the other targets quantize."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from edge.config import positive_float, positive_int
from edge.errors import UserError
from edge.stages.base import BuildState, Stage, StageConfig, register_stage

log = logging.getLogger("edge")


@dataclass(frozen=True)
class QATConfig(StageConfig):
    qat: bool = False
    epochs: int | None = None  # None: the recipe's default (edge.quantize.qat)
    lr: float | None = None
    max_steps: int | None = None
    uses_train = True

    def enabled(self) -> bool:
        return self.qat

    def validate(self, build) -> None:
        if not self.qat:
            given = [f"--{k.replace('_', '-')}" for k in ("epochs", "lr", "max_steps") if getattr(self, k) is not None]
            if given:
                raise UserError(f"{', '.join(given)} only apply to quantization-aware training; add --qat")
            return
        if build.precision != "int8":
            raise UserError("--qat trains for int8; add --int8")
        positive_int(self.epochs, "--epochs")
        positive_int(self.max_steps, "--max-steps")
        positive_float(self.lr, "--lr")


class QAT(Stage):
    name = "qat"
    scope = "model"
    order = 40
    Config = QATConfig

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("quantization-aware training (with --int8)")
        g.add_argument("--qat", action="store_true",
                       help="fine-tune with fake quantization before the int8 export (see README)")
        g.add_argument("--epochs", type=int, help="passes over the training samples (default 10)")
        g.add_argument("--lr", type=float, help="learning rate (SGD, cosine decay; default 1e-4)")
        g.add_argument("--max-steps", type=int, help="stop after this many steps (batches of 16)")

    def run(self, state: BuildState, artifact=None) -> dict:
        from edge.quantize import qat
        from edge.training import check_classes

        cfg, c = state.config, state.config.stage(self.name)
        if cfg.train and cfg.eval and Path(cfg.train).resolve() == Path(cfg.eval).resolve():
            log.warning("--train and --eval are the same data: the accuracy check then measures training samples")
        data = state.training_data()
        check_classes(data, next((o.shape[1] for o in state.spec.outputs if o.task == "classification"), 0))
        opts = {k: v for k, v in (("epochs", c.epochs), ("lr", c.lr), ("max_steps", c.max_steps)) if v is not None}
        log.info("qat: fine-tuning on %s", data.source)
        state.qat = qat.fine_tune(state.model, state.ctx.example_tensors(), data, spec=state.spec, **opts)
        state.model = state.qat.float_model
        state.ctx = replace(state.ctx, model=state.model, qat=state.qat)
        return state.qat.record


register_stage(QAT())
