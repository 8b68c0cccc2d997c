"""check: the artifact runs in its own runtime on the check samples and is compared with the
reference's outputs, output by output (edge/parity.py)."""
from __future__ import annotations

import logging
import time

import numpy as np

from edge.parity import ParityReport, compare
from edge.stages.base import ArtifactState, BuildState, Stage, register_stage

log = logging.getLogger("edge")


def attempt(state: BuildState, artifact: ArtifactState, exported) -> tuple:
    """Run an exported artifact on the check samples: (runner, report, ms per sample)."""
    from edge.progress import bar

    cfg, check = state.config, state.check
    runner = artifact.target.load(exported.path, {"precision": cfg.precision, "inputs": [t.to_json() for t in exported.inputs],
                                                  "outputs": [t.to_json() for t in exported.outputs],
                                                  "target_details": exported.details})
    t0 = time.perf_counter()
    n = len(check.samples)
    chunks = [runner.run({k: v[i:i + 32] for k, v in check.samples.arrays.items()})
              for i in bar(range(0, n, 32), f"{artifact.target.name} parity", total=-(-n // 32), unit="batch")]
    y = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    ms = (time.perf_counter() - t0) * 1e3 / n
    tasks = {o.name: o.task for o in state.spec.outputs}
    report = compare(check.reference, y, cfg.precision, state.budgets, check.source, check.labels, tasks,
                     state.judged_on)
    return runner, report, ms


def summary(r: ParityReport) -> str:
    parts = []
    for name, o in r.outputs.items():
        f = o.figures
        keys = ["max_abs_diff", "min_cosine"] if r.precision != "int8" else ["mean_cosine", "sqnr_db"]
        if o.task == "classification":
            keys += ["top1_agreement"] if r.precision == "int8" else []
            keys += [k for k in ("reference_top1", "top1", "top1_drop_pp") if k in f]
        figs = ", ".join(f"{k} {f[k]:.4g}" for k in keys if k in f)
        parts.append(f"{name}: {figs}" if len(r.outputs) > 1 else figs)
    return f"parity {'ok' if r.passed else 'FAILED'} on {r.samples} samples ({'; '.join(parts)})"


class Check(Stage):
    name = "check"
    scope = "artifact"
    order = 70

    def run(self, state: BuildState, artifact: ArtifactState) -> dict:
        artifact.runner, artifact.report, artifact.ms_per_sample = attempt(state, artifact, artifact.exported)
        log.info("%s %s: %s", artifact.target.name, state.config.precision, summary(artifact.report))
        return {"passed": artifact.report.passed, "samples": artifact.report.samples,
                "source": artifact.report.sample_source, "runtime": artifact.runner.runtime}


register_stage(Check())
