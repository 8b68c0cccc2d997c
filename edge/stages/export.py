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
        return {"target": t.name, "format": t.suffix, "size_bytes": artifact.path.stat().st_size}


register_stage(Export())
