"""reference: the fp32 network every artifact is compared with, run on the check samples. It runs
after the stages that change the network (fine-tuning, pruning, distillation: their result is the
reference) and before the per-target stages; QAT does not change it (an int8 artifact is judged
against the float network it was trained from)."""
from __future__ import annotations

import logging

from edge.errors import UserError
from edge.stages.base import BuildState, Check, Stage, register_stage

log = logging.getLogger("edge")


class Reference(Stage):
    name = "reference"
    scope = "model"
    order = 38

    def run(self, state: BuildState, artifact=None) -> None:
        from edge.models.loading import guarded
        from edge.runner import TorchRunner

        spec, samples = state.spec, state.check.samples
        check_labels(spec, samples)
        log.info("reference: %s on %d samples from %s", spec.name, len(samples), samples.source)
        with guarded(spec, "forward"):
            ref = TorchRunner(state.reference, spec).run(samples.arrays, progress="reference pass")
        state.check = Check(samples, ref, state.check.source)
        return None


def check_labels(spec, samples) -> None:
    """--eval's class indices fit the classification output (after fine-tuning: its new classes)."""
    if samples.labels is None:
        return
    labels = samples.labels
    cls = next((o for o in spec.outputs if o.task == "classification"), None)
    if cls is None:
        raise UserError(f"--eval gives class labels, but {spec.name} has no classification output to score them on")
    classes = cls.shape[1]
    if labels.max() >= classes:
        raise UserError(f"--eval {samples.source.removeprefix('eval ')} has class index {labels.max()}, but "
                        f"{spec.name} has {classes} classes")
    if len(set(labels.tolist())) == 1:
        log.warning("--eval holds a single class (%d): top-1 then measures one class's recall, not accuracy",
                    int(labels[0]))


register_stage(Reference())
