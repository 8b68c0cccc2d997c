"""`edge verify OUT_DIR`: re-run the check of a finished build, for CI.

Everything verification needs is in the build folder as data: each artifact (its sha256 in the
manifest), and its check samples (inputs and the PyTorch reference's outputs on them, stored at
build time, their sha256 in the manifest). No code is imported and no file is read that the
person did not name: a build folder from a pull request cannot run anything. Checking accuracy
on labelled data (`--eval DATA`) needs the reference model itself: a registered model is built
from edge's registry; a user's network must be named on the command line (`--model
file.py:factory`, and `--weights FILE` for weights from a file), and both are checked against the
sha256 the build recorded."""
from __future__ import annotations

import logging
from pathlib import Path

from edge import manifest as mf
from edge.errors import ParityError, UserError

log = logging.getLogger("edge")


def load_manifest(path: Path) -> dict:
    m = mf.read(path)
    if not mf.is_edge_manifest(m):
        raise UserError(f"{path} is not an edge manifest")
    for key in ("artifact", "target", "sha256", "precision"):
        if key not in m:
            raise UserError(f"{path} lacks '{key}'; it is not a complete edge manifest (rebuild it with edge build)")
    mf.check_inputs(m, path)
    return m


def artifact_of(path: Path, m: dict) -> Path:
    """The artifact a manifest describes: inside its folder, present, and matching its sha256."""
    artifact = mf.member(path.parent, m["artifact"], "artifact")
    if not artifact.is_file():
        raise ParityError(f"{artifact} is missing")
    if mf.sha256(artifact) != m["sha256"]:
        raise ParityError(f"{artifact} does not match the sha256 in its manifest")
    return artifact


def check_samples(path: Path, m: dict) -> tuple[dict, dict, str]:
    """(inputs, reference outputs, source) stored beside the artifact at build time."""
    c = m.get("check")
    if not isinstance(c, dict) or "file" not in c or "sha256" not in c:
        raise UserError(f"{path} predates stored check samples (edge < 0.2); rebuild it with edge build, or pass "
                        "--eval DATA to check it against the reference model")
    f = mf.member(path.parent, c["file"], "check file")
    if not f.is_file() or mf.sha256(f) != c["sha256"]:
        raise ParityError(f"{f} is missing or does not match the sha256 in its manifest")
    inputs, ref = mf.read_check(f)
    return inputs, ref, f"{c.get('source', 'check samples')} (stored at build time)"


def budgets(m: dict, overrides: dict | None) -> tuple[dict, dict]:
    """(output name -> budget, output name -> task) from a manifest, with the user's overrides."""
    p = m.get("parity") or {}
    outs = p.get("outputs")
    if isinstance(outs, dict) and outs:
        b = {k: dict(v.get("budget") or {}) for k, v in outs.items()}
        tasks = {k: v.get("task", "classification") for k, v in outs.items()}
    else:  # schema 1: one classification output
        name = ((m.get("output") or {}).get("name")) or "output"
        b, tasks = {name: dict(p.get("budget") or {})}, {name: "classification"}
    for k in b:
        b[k].update({key: v for key, v in (overrides or {}).items() if key in _applicable(tasks[k], m["precision"])})
    return b, tasks


def _applicable(task: str, precision: str) -> set:
    from edge.parity import _keys
    from edge.tensors import judged_as

    return _keys(judged_as(task), precision)


def verify(out_dir: str | Path, eval: str | None = None, budget: dict | None = None, model: str | None = None,
           weights: str | None = None) -> list[dict]:
    """Re-run the check of every artifact in a build folder. Returns the fresh parity reports;
    raises ParityError when any artifact misses its budget or no longer matches its hash."""
    from edge.parity import compare
    from edge.precisions import check_budget
    from edge.stages.check import summary
    from edge.targets import TARGETS

    check_budget(budget or {})
    manifests = mf.find(Path(out_dir))
    if not manifests:
        raise UserError(f"no manifest.json in {out_dir} or its subfolders; is it an `edge build` output folder?")
    reports, failures = [], []
    for path in manifests:
        m = load_manifest(path)
        target = TARGETS.get(m["target"])
        try:
            artifact = artifact_of(path, m)
            if eval is None:
                x, ref, source = check_samples(path, m)
                labels = None
        except ParityError as e:  # this artifact fails; the others are still checked
            failures.append(str(e))
            reports.append({"artifact": str(path.parent / m["artifact"]), "target": m["target"],
                            "precision": m["precision"], "passed": False, "failures": [str(e)]})
            continue
        if eval is not None:
            x, ref, source, labels = reference_on(m, eval, model, weights, path.parent)
        b, tasks = budgets(m, budget)
        if eval is None:
            for v in b.values():
                v.pop("max_top1_drop", None)  # an accuracy budget needs labelled data
        missing = sorted(set(tasks) - set(ref))
        if missing:
            raise UserError(f"{path}: the check samples hold no reference for output {', '.join(missing)}")
        runner = target.load(artifact, m)
        report = compare(ref, runner.run(x), m["precision"], b, source, labels, tasks,
                         (m.get("parity") or {}).get("judged_on"))
        log.info("%s: %s", artifact, summary(report))
        reports.append({"artifact": str(artifact), "target": m["target"], "precision": m["precision"],
                        **report.to_json()})
        if not report.passed:
            failures.append(f"{artifact.name}: " + "; ".join(report.failures))
    if failures:
        err = ParityError("verify failed: " + " | ".join(failures))
        err.reports = reports  # every artifact's report (passed or not), for a JUnit report
        raise err
    return reports


def reference_on(m: dict, eval: str, model: str | None, weights: str | None, folder: Path | None = None):
    """(inputs, reference outputs, source, labels) on labelled data, from the reference model."""
    from edge.quantize.calibration import evaluation_set
    from edge.runner import TorchRunner

    spec, net = reference_model(m, model, weights, folder)
    s = evaluation_set(eval, spec)
    return s.arrays, TorchRunner(net, spec).run(s.arrays, progress="reference pass"), s.source, \
        _fine_tuned_labels(m, s.labels, eval)


def _fine_tuned_labels(m: dict, labels, eval: str):
    """--eval's labels in a fine-tuned model's classes (the class map its build recorded)."""
    import numpy as np

    cmap = next((s.get("class_map") for s in m.get("stages") or [] if isinstance(s, dict)
                 and s.get("stage") == "finetune"), None)
    if labels is None or not isinstance(cmap, dict):
        return labels
    cmap = {int(k): int(v) for k, v in cmap.items()}
    missing = sorted(set(int(v) for v in labels) - set(cmap))
    if missing:
        raise UserError(f"--eval {eval} has class index {missing[0]}, which {m['artifact']} was not fine-tuned to")
    return np.array([cmap[int(v)] for v in labels], np.int64)


def reference_model(m: dict, model: str | None = None, weights: str | None = None, folder: Path | None = None):
    """(spec, fp32 eval-mode nn.Module) of the build a manifest describes. A registered model comes
    from the registry; a user's network and weights from a file only when given here, and only if
    they match the sha256 the build recorded. A network the build's stages changed (fine-tuned,
    pruned) is the registry's (or the user's) network reshaped and loaded from the reference.pt
    saved beside the artifact (`folder`), checked against its sha256."""
    from edge.config import BuildConfig
    from edge.models.loading import file_sha256, is_custom, load_model, resolve_model

    try:
        cfg = BuildConfig.from_json((m.get("build") or {})["config"])
    except (KeyError, TypeError) as e:
        raise UserError(f"the manifest of {m.get('artifact')} lacks its build config ({e}); rebuild it") from None
    name, w = cfg.model, cfg.weights
    if is_custom(name):
        if model is None:
            raise UserError(f"{m['artifact']} was built from a user's network ({name}); pass --model FILE.py:FACTORY "
                            "to name the file to import (edge does not run code a build folder names)")
        recorded = (m.get("model_file") or {}).get("sha256")
        got = file_sha256(model.rsplit(":", 1)[0]) if Path(model.rsplit(":", 1)[0]).is_file() else None
        if got is None or recorded != got:
            raise UserError(f"--model {model} is not the file {m['artifact']} was built from (its sha256 differs "
                            "from the one recorded at build time)")
        name = model
    saved = m.get("reference_state")
    if saved is not None:
        return _saved_reference(m, saved, name, cfg, folder)
    if w not in ("imagenet", "random"):
        if weights is not None and not Path(weights).is_file():
            raise UserError(f"--weights {weights} does not exist")
        if weights is None:
            raise UserError(f"{m['artifact']} was built with weights from {w}; pass --weights FILE to name them")
        if m.get("weights_sha256") != file_sha256(weights):
            raise UserError(f"--weights {weights} is not the file {m['artifact']} was built with (sha256 differs)")
        w = weights
    spec = resolve_model(name, cfg.input_shape, cfg.tasks)
    return spec, load_model(spec, w)


def _saved_reference(m: dict, saved, name: str, cfg, folder: Path | None):
    from edge.models.loading import guarded, resolve_model
    from edge.network import load_reference

    if folder is None or not isinstance(saved, dict) or "file" not in saved:
        raise UserError(f"the manifest of {m.get('artifact')} names no usable reference_state; rebuild it")
    path = mf.member(folder, saved["file"], "reference file")
    if not path.is_file() or mf.sha256(path) != saved.get("sha256"):
        raise ParityError(f"{path} is missing or does not match the sha256 in its manifest")
    spec = resolve_model(name, cfg.input_shape, cfg.tasks)
    with guarded(spec, "building the network"):
        base = spec.build()
    net, classes = load_reference(base, path)
    if classes:
        spec = spec.with_classes(classes)
    return spec, net
