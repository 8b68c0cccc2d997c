"""prune: structured pruning (`--prune R`: a fraction of each layer's channels, or `--prune-macs M`:
a MACs target), in `--prune-steps` equal steps (default 1), each followed but the last by a short
recovery that distils from the unpruned network (labels too when --train has them). After each
step the layers whose inputs were cut are re-fitted by least squares against the unpruned network
(edge.pruning.reconstruct). The distill stage that follows is the final recovery. The pruner and
its choices: edge/pruning.py."""
from __future__ import annotations

import copy
import logging
import math
import re
import time
from dataclasses import dataclass

import numpy as np

from edge.config import positive_int
from edge.errors import UserError
from edge.stages.base import BuildState, Stage, StageConfig, register_stage

log = logging.getLogger("edge")

# One step, re-fitted, then the distill stage. On the fine-tuned Lite0 to 0.6x MACs (held-out loss
# right after each re-fit): three steps with nothing in between re-fit to 0.08, 0.56, 1.57 (one
# step: 1.48), but with a recovery between them to 0.58, 3.7, 8.0 (the build's manifest): training
# between steps made the next re-fit worse, not better.
DEFAULT_STEPS = 1
RECOVER_EPOCHS = 0.2  # of the training samples, after each pruning step but the last
BATCH_SIZE = 32
HOLDOUT = 0.1
# Training samples the least-squares re-fit matches the unpruned network on. Fine-tuned Lite0 to 0.6x
# MACs, 547 held-out photos (benchmarks/results/prune_recipe_lite0.md): 128 samples
# 83.0% top-1, 512 90.0%, 1024 90.9% (89.8%, 91.0%, 92.1% once the classifier is re-fitted too); the
# re-fit takes 32 s, 83 s and 211 s.
RECONSTRUCT_SAMPLES = 1024
ALLOCATIONS = ("sensitivity", "uniform")
DEFAULT_ALLOCATION = "sensitivity"


def parse_macs(value) -> tuple[str, float]:
    """("fraction", f) for 0 < f < 1 (of the model's MACs), ("macs", n) for a count: 230M, 0.23G, 230000000."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kKmMgG]?)", text)
        if not m:
            raise UserError(f"--prune-macs {value!r}: give a fraction of the model's MACs (0.6) or a count (230M, "
                            "0.23G)")
        v = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    else:
        raise UserError(f"--prune-macs {value!r}: give a fraction of the model's MACs (0.6) or a count (230M)")
    if not math.isfinite(v) or v <= 0:
        raise UserError(f"--prune-macs {text}: must be above 0")
    if v < 1:
        return "fraction", v
    if v < 1000:
        raise UserError(f"--prune-macs {text}: a fraction must be below 1, a MACs count at least 1000 (230M)")
    return "macs", v


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    prune: float | None = None  # fraction of each layer's channels to remove
    prune_macs: str | float | None = None  # MACs target: a fraction of the model's or a count
    prune_steps: int | None = None  # gradual: this many equal steps (default DEFAULT_STEPS)
    prune_allocation: str | None = None  # with --prune-macs: "sensitivity" (default) or "uniform"
    uses_train = True

    def enabled(self) -> bool:
        return self.prune is not None or self.prune_macs is not None

    def validate(self, build) -> None:
        if not self.enabled():
            for value, flag in ((self.prune_steps, "--prune-steps"), (self.prune_allocation, "--prune-allocation")):
                if value is not None:
                    raise UserError(f"{flag} applies to pruning; add --prune R or --prune-macs M")
            return
        if self.prune_allocation not in (None, *ALLOCATIONS):
            raise UserError(f"--prune-allocation {self.prune_allocation!r}: one of {', '.join(ALLOCATIONS)}")
        if self.prune is not None and self.prune_allocation == "sensitivity":
            raise UserError("--prune R removes the same fraction of every layer's channels; for a per-layer "
                            "allocation give a MACs target: --prune-macs M --prune-allocation sensitivity")
        if self.prune is not None and self.prune_macs is not None:
            raise UserError("give --prune (a fraction of channels) or --prune-macs (a MACs target), not both")
        if self.prune is not None:
            p = self.prune
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
                raise UserError(f"--prune {p!r}: the fraction of channels to remove must be between 0 and 1 "
                                "(0.3 removes 30%)")
        else:
            parse_macs(self.prune_macs)
        positive_int(self.prune_steps, "--prune-steps")


class Prune(Stage):
    name = "prune"
    scope = "model"
    order = 30
    Config = PruneConfig

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("structured pruning and distillation (torch-pruning)")
        g.add_argument("--prune", type=float, metavar="R", help="remove this fraction of each layer's channels (0-1)")
        g.add_argument("--prune-macs", metavar="M",
                       help="prune until the network has at most M MACs: a fraction of its own (0.6) or a count "
                            "(230M)")
        g.add_argument("--prune-allocation", choices=ALLOCATIONS,
                       help="with --prune-macs, how the cut is shared: 'sensitivity' (default) prunes each layer "
                            "group alone first and cuts most where it costs least; 'uniform' cuts every group by "
                            "the same fraction")
        g.add_argument("--prune-steps", type=int, help=f"prune gradually in this many steps (default {DEFAULT_STEPS}), "
                                                       "recovering by distillation in between")

    def run(self, state: BuildState, artifact=None) -> dict:
        from edge import pruning, training
        from edge.network import measure

        c, spec = state.config.stage(self.name), state.spec
        example = state.ctx.example_tensors()
        cls = next((o for o in spec.outputs if o.task == "classification"), None)
        classes = cls.shape[1] if cls is not None else None
        before = measure(state.model, example)
        t0 = time.perf_counter()
        teacher = state.model
        data = state.training_data()
        rng = np.random.default_rng(0)
        train, val = training.split(data, HOLDOUT, rng)
        tasks = [o.task for o in spec.outputs]
        pick = reconstruction_sample(len(train), RECONSTRUCT_SAMPLES, rng)
        fit = [train.batch(pick[i:i + 16]) for i in range(0, len(pick), 16)]
        n_fit = len(pick)
        ratios, allocation = None, None
        if c.prune is not None:
            ratio, target = float(c.prune), None
        else:
            kind, v = parse_macs(c.prune_macs)
            target = int(v * before["macs"]) if kind == "fraction" else int(v)
            if target >= before["macs"]:
                raise UserError(f"--prune-macs asks for {target / 1e6:.3g} M MACs, but the network has "
                                f"{before['macs'] / 1e6:.3g} M already; give a smaller target")
            if (c.prune_allocation or DEFAULT_ALLOCATION) == "sensitivity":
                ratio = None
                allocation = _allocate(teacher, example, classes, tasks, train, val, before["macs"] - target, rng)
                ratios = allocation["ratios"]
            else:
                log.info("prune: finding the ratio for at most %.1f M MACs (the network has %.1f M)", target / 1e6,
                         before["macs"] / 1e6)
                ratio = pruning.ratio_for_macs(teacher, example, target, classes)
        steps = c.prune_steps or DEFAULT_STEPS
        student = copy.deepcopy(teacher).eval()
        pruner = pruning.make_pruner(student, example, ratio, steps, classes, ratios=ratios)
        history = []
        for i in range(steps):
            pruner.step()
            refitted = pruning.reconstruct(student, teacher, fit) if pruning.KEEP_RESIDUAL else []
            if not refitted:
                training.reestimate_bn(student, train)  # the channels that fed each batch norm changed
            head = _refit_classifier(student, teacher, classes, train, val) if refitted else None
            after = measure(student, example)
            log.info("prune: step %d/%d: %.1f M MACs (%.0f%%), %.2f M parameters", i + 1, steps, after["macs"] / 1e6,
                     100 * after["macs"] / before["macs"], after["params"] / 1e6)
            entry = {"step": i + 1, **after, "refitted": len(refitted), "classifier": head}
            rec = pruning.recovery(refitted)
            silenced = training.silence_dead_channels(student) if not rec.batch_statistics else 0
            if i + 1 < steps:
                n = max(1, int(round(RECOVER_EPOCHS * len(train) / BATCH_SIZE)))
                with rec.mode(student):
                    r = training.distill(student, teacher, train, val, steps=n, check_every=n, lr=rec.lr,
                                         batch_size=BATCH_SIZE, rng=rng, tasks=tasks, clip=rec.clip,
                                         hints=rec.pairs(student, teacher),
                                         label=f"prune {i + 1}/{steps}: recover")
                if rec.batch_statistics:
                    training.reestimate_bn(student, train)
                entry["recovery"] = {"steps": n, "held_out_loss": r.checks}
            history.append(entry)
        if c.prune is not None and after["macs"] >= before["macs"]:  # a MACs target is checked below
            raise UserError(f"--prune {c.prune:g} removed no channel: with channel counts in multiples of "
                            f"{pruning.ROUND_TO}, every layer would fall to 0 and is left whole; give a smaller ratio")
        if target is not None and after["macs"] > target:
            raise UserError(f"pruning reached {after['macs'] / 1e6:.1f} M MACs, above --prune-macs "
                            f"{target / 1e6:.1f} M; give a lower target")
        state.teacher = teacher
        state.recovery = rec
        state.set_network(student.eval(), self.name)
        return {"ratio": ratio, "macs_target": target, "allocation": allocation or {"policy": "uniform"},
                "steps": history, "importance": "group L2 magnitude",
                "round_to": pruning.ROUND_TO,
                "kept_whole": "first convolution, classifier"
                + (", residual streams and block outputs" if pruning.KEEP_RESIDUAL else ""),
                "reconstruction": {"samples": n_fit, "ridge": pruning.RIDGE, "method": "least squares per layer "
                                   "whose inputs were pruned, against the unpruned network's outputs"}
                if pruning.KEEP_RESIDUAL else None,
                "dead_channels_silenced": silenced,
                "recovery": {"epochs_per_step": RECOVER_EPOCHS, "lr": rec.lr, "clip_grad_norm": rec.clip,
                             "hints": list(rec.hints),
                             "batch_size": BATCH_SIZE, "data": data.source,
                             "batch_norm": "batch statistics in training; running statistics re-estimated on "
                             "1,024 samples after each step and each recovery" if rec.batch_statistics else
                             "running statistics (kept valid by the re-fit)"},
                "seconds": round(time.perf_counter() - t0, 1), "before": before, "after": after}


def _allocate(teacher, example, classes, tasks, train, val, needed: int, rng) -> dict:
    """The per-group ratios of edge.pruning.allocate from a sensitivity scan on SCAN_SAMPLES
    training samples (re-fit) and as many held-out ones (scored), both drawn at random."""
    from edge import pruning

    scored = val if val is not None else train
    fit_set = train.take(reconstruction_sample(len(train), pruning.SCAN_SAMPLES, rng))
    score_set = scored.take(reconstruction_sample(len(scored), pruning.SCAN_SAMPLES, rng))
    def batches(d):
        return [d.batch(np.arange(i, min(i + 16, len(d)))) for i in range(0, len(d), 16)]

    t0 = time.perf_counter()
    log.info("prune: sensitivity of each layer group at %s of its channels (%d samples each)",
             ", ".join(f"{r:g}" for r in pruning.SCAN_RATIOS), pruning.SCAN_SAMPLES)
    scan = pruning.sensitivity(teacher, example, classes, batches(fit_set), batches(score_set), tasks,
                               after=lambda s: _refit_classifier(s, teacher, classes, fit_set, score_set, quiet=True))
    ratios = pruning.allocate(scan, needed)
    log.info("prune: allocated %s", ", ".join(f"{g} {r:g}" for g, r in ratios.items() if r) or "nothing")
    return {"policy": "sensitivity", "ratios": ratios, "scan_ratios": list(pruning.SCAN_RATIOS),
            "scan_samples": pruning.SCAN_SAMPLES, "seconds": round(time.perf_counter() - t0, 1),
            "scan": {g: {f"{r:g}": {"loss": round(v["loss"], 5), "macs_saved": v["saved"]} for r, v in rows.items()}
                     for g, rows in scan.items()}}


def reconstruction_sample(n: int, k: int, rng) -> np.ndarray:
    """k of n training samples (all when n <= k), in order, drawn at random: the samples come in
    label order, and a re-fit on the first k fits one class (38% top-1 on imagenette, 83% drawn)."""
    return np.sort(rng.permutation(n)[:k])


def _refit_classifier(student, teacher, classes: int | None, train, val, quiet: bool = False) -> dict | None:
    """Train the pruned network's classifier again alone on its features (edge.training.fit_head:
    labels, or the teacher's softmax when unlabelled). When pruning cut its inputs it must be: too
    few rows for the least-squares re-fit to determine it (a Linear of 752 inputs needs thousands
    of samples); on cached features the whole training set costs one forward pass. Fine-tuned Lite0
    at 0.6x MACs, 547 held-out photos: 83.0% -> 89.8% top-1 (re-fit on 128 samples), 90.0% -> 91.0%
    (512), 90.9% -> 92.1% (1024). When its inputs were kept, the features it reads still changed:
    it is re-fitted too, and the old one kept unless the held-out loss fell (allocated pruning that
    left the head whole: 0.294 -> 0.211). quiet: silently, and only when its inputs were cut (the
    sensitivity scan's trials)."""
    from edge import training
    from edge.network import find_classifier

    if classes is None:
        return None
    try:
        name, layer = find_classifier(student, classes)
    except UserError:
        return None
    cut = layer.in_features != find_classifier(teacher, classes)[1].in_features
    if quiet and not cut:
        return None
    if not quiet:
        log.info("prune: training the classifier %s again on the pruned features", name)
    old = copy.deepcopy(layer.state_dict())
    r = training.fit_head(student, name, train, val, teacher=teacher,
                          label=None if quiet else "prune: classifier features")
    kept_old = not cut and r["held_out_loss"] >= r["loss_before"]
    if kept_old:
        layer.load_state_dict(old)
    return {"layer": name, "in_features": layer.in_features, "inputs_cut": cut, "kept": "old" if kept_old else "re-fitted",
            **r}


register_stage(Prune())
