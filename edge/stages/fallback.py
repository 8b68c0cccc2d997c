"""fallback (--max-drop): an int8 artifact that missed its accuracy budget is rebuilt with its most
sensitive layers in float, more at each attempt, until the budget is met. Layers are ranked by
measured sensitivity (edge.quantize.sensitivity: the SQNR each layer loses against PyTorch, on
calibration samples), as `edge explain` reports it."""
from __future__ import annotations

import logging
import os
from dataclasses import replace

from edge.stages.base import ArtifactState, BuildState, Stage, register_stage
from edge.stages.check import attempt, summary

log = logging.getLogger("edge")

FALLBACK_STEPS = (1, 2, 4, 8, 16, 32, 64)  # layers kept in float per attempt, most sensitive first
FALLBACK_MAX_FRACTION = 0.5  # beyond half the layers in float, it is no longer an int8 model
SENSITIVITY_SAMPLES = 16


class Fallback(Stage):
    name = "fallback"
    scope = "artifact"
    order = 80

    def enabled(self, state: BuildState, artifact: ArtifactState | None = None) -> bool:
        """--max-drop was given, the int8 artifact missed it, and the target can keep layers in float."""
        r = artifact.report
        if (state.config.precision != "int8" or "max_top1_drop" not in state.config.budget or r is None
                or r.passed or not any("top1_drop_pp" in o.figures for o in r.outputs.values())):
            return False
        if not artifact.target.float_fallback:
            log.warning("%s int8 missed --max-drop and this target cannot keep layers in float; try --target onnx",
                        artifact.target.name)
            return False
        return True

    def run(self, state: BuildState, artifact: ArtifactState) -> dict:
        target, first = artifact.target, artifact
        x = state.calib.head(SENSITIVITY_SAMPLES).arrays
        manifest = {"inputs": [t.to_json() for t in first.exported.inputs],
                    "target_details": first.exported.details}
        layers = target.layer_outputs(first.exported.path, state.reference, x, manifest) or []
        ranked = [l for l in sorted(layers, key=lambda l: -(l.local_drop_db or 0.0)) if l.nodes]
        drop0 = _drop(first.report)
        log.info("%s int8 missed the budget (top-1 drop %.2f pp); keeping its most sensitive layers in float: %s",
                 target.name, drop0, ", ".join(f"{l.module} (-{l.local_drop_db or 0.0:.1f} dB)" for l in ranked[:5]))

        def record(a: ArtifactState, kept: list) -> dict:
            return {"kept_float": [l.module for l in kept], "top1_drop_pp": round(_drop(a.report), 3),
                    "top1": a.report.figures.get("top1"), "size_bytes": a.exported.path.stat().st_size,
                    "ms_per_sample": round(a.ms_per_sample, 3), "passed": a.report.passed}

        attempts, best, best_kept = [record(first, [])], first, []
        cap = max(1, int(len(ranked) * FALLBACK_MAX_FRACTION))
        for k in sorted({min(k, cap) for k in FALLBACK_STEPS}):
            kept = ranked[:k]
            path = first.path.with_name(f"{first.path.stem}.float{k}{first.path.suffix}")
            kctx = replace(state.ctx, keep_float=tuple(n for l in kept for n in l.nodes))
            a = ArtifactState(target, path)
            a.prepared = target.quantize(kctx)
            a.exported = target.export(kctx, "int8", path, a.prepared)
            a.runner, a.report, a.ms_per_sample = attempt(state, a, a.exported)
            attempts.append(record(a, kept))
            log.info("%s int8 with %d layer(s) in float: %s", target.name, k, summary(a.report))
            if _drop(a.report) < _drop(best.report) or a.report.passed:
                best, best_kept = a, kept
            if a.report.passed:
                break
        if best is not first:
            os.replace(best.exported.path, first.path)
            best.exported.path = first.path
            artifact.exported, artifact.runner, artifact.report = best.exported, best.runner, best.report
            artifact.ms_per_sample = best.ms_per_sample
        drop = _drop(best.report)
        artifact.fallback = {
            "reason": f"int8 missed --max-drop {state.config.budget['max_top1_drop']:g} pp (top-1 drop {drop0:.2f} pp)",
            "ranking": f"local SQNR loss against PyTorch per layer (edge explain), on {len(state.calib.head(SENSITIVITY_SAMPLES))} "
                       "calibration samples",
            "kept_float": [l.module for l in best_kept], "kept_float_nodes": [n for l in best_kept for n in l.nodes],
            "top1_drop_pp": round(drop, 3), "size_bytes": first.path.stat().st_size,
            "int8_size_bytes": attempts[0]["size_bytes"], "ms_per_sample": round(best.ms_per_sample, 3),
            "int8_ms_per_sample": attempts[0]["ms_per_sample"],
            "latency_note": "in-process, batch 1, over the evaluation samples; use edge bench for figures to compare",
            "attempts": attempts,
            "best": f"top-1 drop {drop:.2f} pp with {len(best_kept)} layer(s) in float: "
                    f"{', '.join(l.module for l in best_kept) or 'none'}; at most {cap} of {len(ranked)} layers "
                    "may stay in float",
        }
        return {"kept_float": artifact.fallback["kept_float"], "top1_drop_pp": artifact.fallback["top1_drop_pp"],
                "attempts": len(attempts), "passed": artifact.report.passed}


def _drop(report) -> float:
    return max(o.figures.get("top1_drop_pp", 0.0) for o in report.outputs.values())


register_stage(Fallback())
