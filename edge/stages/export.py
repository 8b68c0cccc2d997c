"""export: the target writes its artifact into the staging folder (converting what the quantize
stage prepared, for int8)."""
from __future__ import annotations

import logging

from edge.stages.base import ArtifactState, BuildState, Stage, register_stage

log = logging.getLogger("edge")


class Export(Stage):
    name = "export"
    scope = "artifact"
    order = 60

    def run(self, state: BuildState, artifact: ArtifactState) -> dict:
        t = artifact.target
        artifact.exported = t.export(state.ctx, state.config.precision, artifact.path, artifact.prepared)
        record = {"target": t.name, "format": t.suffix, "size_bytes": artifact.path.stat().st_size}
        delegation = t.delegation(artifact.exported)
        if delegation is not None:
            record["delegation"] = delegation
            if delegation["split"]:
                log.warning("%s: the runtime does not run the whole graph on its optimised kernels: %s", t.name,
                            "; ".join(f"{op} x{_count(delegation, op)} ({why})" for op, why in delegation["split"].items()))
        return record


def _count(delegation: dict, op: str) -> int:
    return (delegation.get("outside") or delegation.get("float_between_qdq") or {}).get(op, 0)


register_stage(Export())
