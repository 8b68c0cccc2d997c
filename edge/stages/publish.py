"""publish: every artifact that passed its check becomes OUT/<target>/: the artifact, its labels
(a classifier), its check samples and, last, its manifest, assembled in the staging folder and
swapped into place whole (edge.manifest.publish_folder)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from edge import manifest as mf
from edge.stages.base import ArtifactState, BuildState, Stage, register_stage

log = logging.getLogger("edge")
CHECK_SAMPLES = 32  # check samples kept beside an artifact for `edge verify`


class Publish(Stage):
    name = "publish"
    scope = "build"
    order = 90

    def run(self, state: BuildState, artifact=None) -> dict:
        published = []
        for a in state.artifacts:
            if a.passed:
                published.append(publish(state, a))
        state.published = published
        return {"published": [m["target"] for m in published]}


def publish(state: BuildState, a: ArtifactState) -> dict:
    folder = state.staging / "publish" / a.target.name
    folder.mkdir(parents=True)
    final = folder / a.exported.path.name
    os.replace(a.exported.path, final)
    a.exported.path = final
    labels = _labels(state, folder)
    check = _check(state, folder)
    extra = a.target.finish(a.exported, state.spec, folder / labels if labels else None)
    m = manifest(state, a, labels, check, extra)
    if state.reshaped:
        m["reference_state"] = _reference(state, folder)
    mf.write_json_atomic(folder / mf.MANIFEST, m)
    dest = state.out / a.target.name
    mf.publish_folder(folder, dest)
    log.info("wrote %s (%d bytes) and %s", dest / final.name, m["size_bytes"], dest / mf.MANIFEST)
    return m


def _labels(state: BuildState, folder: Path) -> str | None:
    """labels.txt (one class name per line, in class-index order) beside a classifier's artifact."""
    cls = next((o for o in state.spec.outputs if o.task == "classification"), None)
    if cls is None:
        return None
    n = cls.shape[1]
    names = state.spec.labels() if state.spec.labels else None
    if not names or len(names) != n:
        names = [str(i) for i in range(n)]
    (folder / mf.LABELS_FILE).write_text("".join(f"{x}\n" for x in names))
    return mf.LABELS_FILE


def _reference(state: BuildState, folder: Path) -> dict:
    """The network the stages made (fine-tuned, pruned), saved as data for `edge verify --eval`
    and `edge explain`, which cannot rebuild it from the registry alone."""
    from edge.network import REFERENCE_FILE, save_reference

    path = folder / REFERENCE_FILE
    names = state.spec.labels() if "finetune" in state.reshaped and state.spec.labels else None
    save_reference(state.reference, path, names)
    return {"file": REFERENCE_FILE, "sha256": mf.sha256(path), "made_by": list(dict.fromkeys(state.reshaped)),
            "note": "the fp32 network the artifact was converted from and is checked against: its state dict and "
                    "module sizes (torch.load weights_only=True)"}


def _check(state: BuildState, folder: Path) -> dict:
    s = state.check.samples.head(CHECK_SAMPLES)
    ref = {k: v[:len(s)] for k, v in state.check.reference.items()}
    path = folder / mf.CHECK_FILE
    mf.write_check(path, s.arrays, ref)
    return {"file": mf.CHECK_FILE, "sha256": mf.sha256(path), "samples": len(s), "source": state.check.source,
            "reference": "the PyTorch fp32 model's outputs on these inputs, at build time"}


def manifest(state: BuildState, a: ArtifactState, labels: str | None, check: dict, extra: dict | None) -> dict:
    cfg, spec, e, report = state.config, state.spec, a.exported, a.report
    m = {
        "schema": mf.SCHEMA,
        "schema_version": mf.SCHEMA_VERSION,
        "artifact": e.path.name,
        "target": a.target.name,
        "precision": cfg.precision,
        "size_bytes": e.path.stat().st_size,
        "sha256": mf.sha256(e.path),
        "model": spec.name,
        "weights": cfg.weights,
        **state.inputs_record,
        "inputs": [dict(t.to_json(), source=i.source.to_json()) for t, i in zip(e.inputs, spec.inputs)],
        "outputs": [dict(t.to_json(), task=o.task) for t, o in zip(e.outputs, spec.outputs)],
    }
    if len(e.inputs) == 1 and len(e.outputs) == 1:  # the schema-1 fields, for readers that know only them
        m["input"], m["output"] = _legacy(e.inputs[0], spec.inputs[0]), _legacy(e.outputs[0], None)
    if spec.image is not None:
        m["preprocess"] = spec.image.source.preprocess.to_json()
    m.update({
        "labels": labels,
        "check": check,
        "parity": report.to_json() | {"runtime": a.runner.runtime},
        "versions": mf.all_versions(),
        "calibration": state.calib.describe(cfg.calib_method or _method(e)) if state.calib is not None else None,
        "target_details": e.details,
        "stages": state.records + a.records,
        "build": {"config": cfg.to_json(), "seconds": round(a.seconds, 2), "created": mf.now(), "machine": mf.machine()},
    })
    if extra:
        m["target_details"] = {**e.details, **extra}
    if a.fallback:
        m["fallback"] = a.fallback
    m["qat"] = state.qat.record if state.qat is not None else None
    return m


def _legacy(t, model_input) -> dict:
    d = {"name": t.tensor or t.name, "shape": list(t.shape), "dtype": t.dtype}
    if model_input is not None:
        pre = model_input.source.preprocess if model_input.source.kind == "image" else None
        d.update(layout=t.layout, mean=list(pre.mean) if pre else None, std=list(pre.std) if pre else None)
    d.update(scale=t.scale, zero_point=t.zero_point)
    return d


def _method(exported) -> str | None:
    q = exported.details.get("quantization") or {}
    return q.get("method") or q.get("calibration")


register_stage(Publish())
