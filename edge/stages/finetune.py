"""finetune: a new classifier for the user's own classes (`--finetune --train DIR`), as TFLite
Model Maker does with an EfficientNet-Lite backbone: head first, then the whole network.

1. The classifier (the last nn.Linear with the model's class count) is replaced by one with the
   classes of `--train` (`--num-classes N`, or the classes found: an ImageFolder tree's folders,
   or the distinct indices of a labels.csv, mapped to 0..K-1 in sorted order; their names come
   from the folder names or, for ImageNet indices, from the model's own labels).
2. Head: the backbone's features of every training sample are computed once (centre view, batch
   norm on its running statistics), and the new classifier is trained on them alone (AdamW,
   cross-entropy, the epoch with the lowest held-out loss kept). Cheap: one forward pass.
3. Whole network (opt-in): `--finetune-epochs` passes of the shared trainer (edge.training.distill with no
   teacher: cross-entropy on the labels, random crops of 80-100% and flips on the preprocessed
   image, SGD with a cosine decay, batch norm frozen, held-out checkpoint pick).

--eval's labels are mapped with the same class map, so its accuracy is over the new classes."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace

import numpy as np

from edge.config import epochs_value, positive_int
from edge.errors import UserError
from edge.stages.base import BuildState, Stage, StageConfig, register_stage

log = logging.getLogger("edge")

# Whole-network passes after the head. Measured (benchmarks/compress_lite0.py, EfficientNet-Lite0
# on imagenette): one pass at lr 5e-3 raised the held-out loss from the head's 0.032 to 0.64 and
# ended at 0.079, so the head-only checkpoint (step 0) was kept and the pass cost 20 minutes for
# nothing. The default is the head alone; --finetune-epochs E adds whole-network passes at LR,
# the usual fine-tuning rate scaled to batches of 32 (0.01 per 256), not measured here.
DEFAULT_EPOCHS = 0.0
LR = 1e-3
BATCH_SIZE = 32
HOLDOUT = 0.1


@dataclass(frozen=True)
class FinetuneConfig(StageConfig):
    finetune: bool = False
    num_classes: int | None = None  # None: the classes --train holds
    finetune_epochs: float | None = None  # whole-network passes after the head (0: the head only)
    uses_train = True

    def enabled(self) -> bool:
        return self.finetune or self.num_classes is not None

    def validate(self, build) -> None:
        if not self.enabled():
            if self.finetune_epochs is not None:
                raise UserError("--finetune-epochs applies to fine-tuning; add --finetune")
            return
        if build.train is None:
            raise UserError("--finetune trains on your classes: pass --train DIR (an ImageFolder tree or a folder "
                            "with labels.csv)")
        positive_int(self.num_classes, "--num-classes")
        if self.num_classes is not None and self.num_classes < 2:
            raise UserError(f"--num-classes {self.num_classes}: a classifier needs at least 2 classes")
        epochs_value(self.finetune_epochs, "--finetune-epochs")


class Finetune(Stage):
    name = "finetune"
    scope = "model"
    order = 20
    Config = FinetuneConfig

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("fine-tuning on your classes (with --train DIR)")
        g.add_argument("--finetune", action="store_true",
                       help="replace the classifier with one for --train's classes and fine-tune")
        g.add_argument("--num-classes", type=int, help="classes of the new classifier (default: those --train holds)")
        g.add_argument("--finetune-epochs", type=float,
                       help=f"whole-network passes after the head (default {DEFAULT_EPOCHS:g}; 0: the head only)")

    def run(self, state: BuildState, artifact=None) -> dict:
        from edge import training
        from edge.network import measure, replace_classifier

        c, spec = state.config.stage(self.name), state.spec
        data = state.training_data()
        if data.labels is None:
            raise UserError("--finetune needs labelled --train data")
        cls = next((o for o in spec.outputs if o.task == "classification"), None)
        if cls is None:
            raise UserError(f"--finetune replaces a classifier, but {spec.name} has no classification output")
        old = cls.shape[1]
        mapping, names = class_map(data, c.num_classes, spec)
        data = replace(data, labels=np.array([mapping[int(v)] for v in data.labels], np.int64))
        state._train = data  # the later stages (pruning, distillation, QAT) train on the new classes
        state.check = replace(state.check, samples=_remap_eval(state.check.samples, mapping, state.config.eval))
        example = state.ctx.example_tensors()
        before = measure(state.model, example)
        model = copy.deepcopy(state.model).eval()
        head = replace_classifier(model, old, len(names))
        rng = np.random.default_rng(0)
        train, val = training.split(data, HOLDOUT, rng)
        t0 = time.perf_counter()
        log.info("finetune: %d classes from %s; head first (%s)", len(names), data.source, head)
        head_fit = training.fit_head(model, head, train, val)
        log.info("finetune: the head alone: %s top-1 %.2f%% (epoch %d of %d)", head_fit["on"],
                 100 * head_fit["held_out_top1"], head_fit["kept_epoch"], training.HEAD_EPOCHS)
        epochs = DEFAULT_EPOCHS if c.finetune_epochs is None else float(c.finetune_epochs)
        steps = int(round(epochs * len(train) / BATCH_SIZE))
        whole = None
        if steps:
            log.info("finetune: the whole network, %d steps of %d", steps, BATCH_SIZE)
            r = training.distill(model, None, train, val, steps=steps, check_every=max(1, steps // 4), lr=LR,
                                 batch_size=BATCH_SIZE, rng=rng, tasks=[o.task for o in spec.outputs],
                                 label="finetune")
            if r.best is not None:
                model.load_state_dict(r.best[1])
            whole = {"steps": steps, "epochs": round(steps * BATCH_SIZE / len(train), 2), "lr": LR,
                     "batch_size": BATCH_SIZE, "first_loss": round(r.losses[0], 4), "last_loss": round(r.losses[-1], 4),
                     "held_out_loss": r.checks, "kept_step": r.best[0] if r.best else steps}
        state.set_network(model, self.name, spec.with_classes(names))
        return {"classes": names, "class_map": {str(k): v for k, v in mapping.items()}, "replaced": head,
                "train_samples": len(train), "held_out_samples": len(val) if val is not None else 0,
                "head": head_fit, "whole_network": whole, "seconds": round(time.perf_counter() - t0, 1),
                "before": before, "after": measure(model, example),
                "recipe": {"head": f"AdamW lr {training.HEAD_LR:g}, weight decay {training.HEAD_WEIGHT_DECAY:g}, "
                                   f"{training.HEAD_EPOCHS} epochs on cached features",
                           "whole_network": "SGD momentum 0.9, cosine decay, random crop "
                                   "80-100% and flip, batch norm frozen", "holdout": HOLDOUT}}


def class_map(data, num_classes: int | None, spec) -> tuple[dict[int, int], list[str]]:
    """(--train's class index -> the new classifier's index, the class names in new index order)."""
    labels = sorted(set(int(v) for v in data.labels))
    if len(labels) < 2:
        raise UserError(f"--train {data.source} holds one class ({labels[0]}); a classifier needs at least two")
    if data.classes is not None:  # an ImageFolder tree: its folders are the classes
        if num_classes is not None and num_classes != len(data.classes):
            raise UserError(f"--num-classes {num_classes}, but --train {data.source} has {len(data.classes)} class "
                            "folders; pass the matching number or leave --num-classes out")
        return {i: i for i in range(len(data.classes))}, list(data.classes)
    if num_classes is not None and labels[-1] < num_classes:  # indices are the classes themselves
        return {i: i for i in range(num_classes)}, [str(i) for i in range(num_classes)]
    if num_classes is not None and len(labels) != num_classes:
        raise UserError(f"--num-classes {num_classes}, but --train {data.source} has {len(labels)} distinct class "
                        f"indices up to {labels[-1]}; pass --num-classes {len(labels)} or leave it out")
    original = spec.labels() if spec.labels else None
    names = [original[v] if original and v < len(original) else str(v) for v in labels]
    return {v: i for i, v in enumerate(labels)}, names


def _remap_eval(samples, mapping: dict[int, int], eval_path):
    """--eval's labels in the new classes (an index --train does not have is an error)."""
    if samples.labels is None:
        return samples
    missing = sorted(set(int(v) for v in samples.labels) - set(mapping))
    if missing:
        raise UserError(f"--eval {eval_path} has class index {missing[0]}, which --train does not have; "
                        "--eval must hold the classes the model is fine-tuned to")
    return replace(samples, labels=np.array([mapping[int(v)] for v in samples.labels], np.int64))


register_stage(Finetune())
