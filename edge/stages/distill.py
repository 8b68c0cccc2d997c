"""distill: after pruning, the pruned network learns the unpruned one's outputs (KL divergence
between the softmaxes; cross-entropy on the labels as well when --train has them) on --train or,
unlabelled, the --calib samples, for `--distill-epochs` passes (default 1), keeping the checkpoint
with the lowest loss on a held-out tenth. Its record has the KL divergence to the teacher on the
held-out samples before and after."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from edge.config import epochs_value
from edge.errors import UserError
from edge.stages.base import BuildState, Stage, StageConfig, register_stage

log = logging.getLogger("edge")

DEFAULT_EPOCHS = 1.0
BATCH_SIZE = 32
HOLDOUT = 0.1


@dataclass(frozen=True)
class DistillConfig(StageConfig):
    distill_epochs: float | None = None  # None: DEFAULT_EPOCHS after pruning; 0: none

    def validate(self, build) -> None:
        if self.distill_epochs is None:
            return
        if not build.stage("prune").enabled():
            raise UserError("--distill-epochs applies after pruning; add --prune R or --prune-macs M")
        epochs_value(self.distill_epochs, "--distill-epochs")


class Distill(Stage):
    name = "distill"
    scope = "model"
    order = 35
    Config = DistillConfig

    def add_arguments(self, parser) -> None:
        parser.add_argument("--distill-epochs", type=float,
                            help=f"after pruning, passes of distillation from the unpruned network (default "
                                 f"{DEFAULT_EPOCHS:g}; 0: none)")

    def enabled(self, state: BuildState, artifact=None) -> bool:
        e = state.config.stage(self.name).distill_epochs
        return state.teacher is not None and e != 0

    def run(self, state: BuildState, artifact=None) -> dict:
        from edge import training
        from edge.network import measure

        c = state.config.stage(self.name)
        epochs = DEFAULT_EPOCHS if c.distill_epochs is None else float(c.distill_epochs)
        student, teacher = state.model, state.teacher
        data = state.training_data()
        train, val = training.split(data, HOLDOUT, np.random.default_rng(0))  # the held-out tenth pruning kept out
        rng = np.random.default_rng(1)
        tasks = [o.task for o in state.spec.outputs]
        steps = max(1, int(round(epochs * len(train) / BATCH_SIZE)))
        kl_val = val if val is not None else train
        unlabelled = training.TrainSet(kl_val.arrays, None, kl_val.source, kl_val.image)
        kl_before = training.held_out_loss(student, teacher, unlabelled, BATCH_SIZE, tasks)
        log.info("distill: %d steps of %d from the unpruned network on %s", steps, BATCH_SIZE, data.source)
        t0 = time.perf_counter()
        rec = state.recovery
        with rec.mode(student):
            r = training.distill(student, teacher, train, val, steps=steps, check_every=max(1, steps // 4), lr=rec.lr,
                                 batch_size=BATCH_SIZE, rng=rng, tasks=tasks, clip=rec.clip, label="distill",
                                 hints=rec.pairs(student, teacher))
        if r.best is not None:
            student.load_state_dict(r.best[1])
        if rec.batch_statistics:
            training.reestimate_bn(student, train)
        kl_after = training.held_out_loss(student, teacher, unlabelled, BATCH_SIZE, tasks)
        if kl_after > kl_before:
            log.warning("distill: the held-out divergence from the unpruned network rose (%.4g -> %.4g)", kl_before,
                        kl_after)
        state.set_network(student.eval(), self.name)
        example = state.ctx.example_tensors()
        return {"steps": steps, "epochs": round(steps * BATCH_SIZE / len(train), 2), "lr": rec.lr,
                "clip_grad_norm": rec.clip, "hints": list(rec.hints),
                "batch_size": BATCH_SIZE,
                "data": data.source, "labelled": data.labels is not None,
                "held_out_samples": len(val) if val is not None else 0,
                "held_out_loss": r.checks, "kept_step": r.best[0] if r.best else steps,
                "batch_norm": "batch statistics in training; running statistics re-estimated on 1,024 samples after"
                if rec.batch_statistics else "running statistics",
                "kl_to_teacher": {"before": kl_before, "after": kl_after, "on": "held-out" if val is not None
                                  else "training samples"},
                "seconds": round(time.perf_counter() - t0, 1), "after": measure(student, example)}


register_stage(Distill())
