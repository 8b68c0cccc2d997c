"""The build pipeline: config -> model -> calibration set -> export per target -> artifact runner
-> parity against the reference -> manifest, written atomically beside the artifact."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import manifest as mf
from edge.config import BuildConfig
from edge.data import load_images, load_labelled
from edge.errors import ParityError, UserError
from edge.models import ModelSpec, load_model, resolve_model
from edge.parity import ParityReport, compare
from edge.quantize.calibration import Samples, calibration_and_parity
from edge.runner import TorchRunner
from edge.targets import TARGETS, ExportContext

log = logging.getLogger("edge")


@dataclass
class Check:
    """The samples an artifact is checked on, with the reference's outputs on them."""

    x: np.ndarray
    ref: np.ndarray
    source: str
    labels: np.ndarray | None = None


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".edge-probe-")
        probe.close()
    except OSError as e:
        raise UserError(f"cannot write to output folder {out} ({e.strerror}); pass a writable --out") from None


def _check_set(cfg: BuildConfig, spec: ModelSpec, shape, reference: TorchRunner,
               parity: Samples | None) -> Check:
    pre = spec.preprocess.at(shape[2])
    if cfg.eval:
        ds = load_labelled(cfg.eval)
        labels = np.asarray(ds.labels)
        if spec.num_classes and labels.max() >= spec.num_classes:
            raise UserError(f"--eval {cfg.eval} has class index {labels.max()}, but {spec.name} has "
                            f"{spec.num_classes} classes")
        x = load_images(ds.paths, pre)
        log.info("reference: %s on %d labelled images from %s", spec.name, len(x), cfg.eval)
        return Check(x, reference.run(x), f"eval {cfg.eval}", labels)
    if len(parity.x) < 50:
        log.warning("parity is checked on %d held-out samples only; pass --eval DIR (labelled images) "
                    "for an accuracy check", len(parity.x))
    return Check(parity.x, reference.run(parity.x), parity.source)


def build(config: BuildConfig) -> list[dict]:
    """Build every target of `config`; returns the manifests. Raises ParityError (after writing
    the artifacts that passed) when any artifact misses its budget."""
    spec = resolve_model(config.model, config.input_shape)
    shape = tuple(config.input_shape) if config.input_shape else spec.input_shape()
    targets = [TARGETS.get(t) for t in config.targets]
    for t in targets:
        t.check(config.precision, config.io, config.calib_method)
    out = Path(config.out)
    _prepare_out(out)

    model = load_model(spec, config.weights, shape[2])
    pre = spec.preprocess.at(shape[2])
    int8 = config.precision == "int8"
    calib, parity = calibration_and_parity(config.calib, pre, shape, int8, config.eval is not None)
    reference = TorchRunner(model)
    check = _check_set(config, spec, shape, reference, parity)
    budget = {**spec.budget(config.precision), **config.budget}
    qat = _qat(config, spec, model, shape, calib) if config.qat else None

    manifests, failures = [], []
    with tempfile.TemporaryDirectory(prefix=".edge-build-", dir=out) as staging:
        staging = Path(staging).resolve()  # exporters may run tools in other working folders
        ctx = ExportContext(qat.float_model if qat else model, shape, staging, calib.x if calib else None,
                            config.calib_method, config.io, config.opset, qat=qat)
        for i, target in enumerate(targets, 1):
            t0 = time.perf_counter()
            log.info("[%d/%d] %s %s: exporting", i, len(targets), target.name, config.precision)
            exported = target.export(ctx, config.precision, staging / f"{spec.name}.{config.precision}{target.suffix}")
            build_s = time.perf_counter() - t0
            runner = target.load(exported.path, {"precision": config.precision})
            report = compare(check.ref, runner.run(check.x), config.precision, budget, check.source, check.labels)
            log.info("[%d/%d] %s %s: %s", i, len(targets), target.name, config.precision, _summary(report))
            if not report.passed:
                failures.append(f"{target.name} {config.precision}: " + "; ".join(report.failures))
                continue
            dest = out if len(targets) == 1 else out / target.name
            m = _manifest(config, spec, shape, target, exported, report, calib, runner.runtime, build_s)
            m["qat"] = qat.record if qat else None
            manifests.append(_publish(exported.path, m, dest))
    if failures:
        raise ParityError("parity check failed: " + " | ".join(failures))
    return manifests


def _qat(cfg: BuildConfig, spec: ModelSpec, model, shape, calib: Samples):
    """Quantization-aware fine-tuning, once per build: every int8 target starts from its result."""
    import torch

    from edge.quantize import qat

    if cfg.train and cfg.eval and Path(cfg.train).resolve() == Path(cfg.eval).resolve():
        log.warning("--train and --eval are the same folder: the accuracy check then measures training images")
    data = qat.training_set(cfg.train, calib, spec.preprocess.at(shape[2]), spec.num_classes)
    opts = {k: v for k, v in (("epochs", cfg.epochs), ("lr", cfg.lr), ("max_steps", cfg.max_steps)) if v is not None}
    log.info("qat: fine-tuning on %s", data.source)
    return qat.fine_tune(model, torch.zeros(shape), data, **opts)


def _summary(r: ParityReport) -> str:
    f = r.figures
    keys = ["max_abs_diff", "min_cosine"] if r.precision != "int8" else ["top1_agreement", "top5_overlap", "mean_cosine"]
    keys += [k for k in ("reference_top1", "top1", "top1_drop_pp") if k in f]
    figs = ", ".join(f"{k} {f[k]:.4g}" for k in keys if k in f)
    return f"parity {'ok' if r.passed else 'FAILED'} on {r.samples} samples ({figs})"


def _manifest(cfg, spec, shape, target, exported, report, calib, runtime, build_s) -> dict:
    pre = spec.preprocess
    return {
        "schema_version": mf.SCHEMA_VERSION,
        "artifact": exported.path.name,
        "target": target.name,
        "precision": cfg.precision,
        "size_bytes": exported.path.stat().st_size,
        "sha256": mf.sha256(exported.path),
        "model": spec.name,
        "weights": cfg.weights,
        "input": exported.input.to_json(pre.mean, pre.std),
        "output": exported.output.to_json(),
        "preprocess": {"resize": spec.preprocess.at(shape[2]).resize, "crop": shape[2], "interpolation": "bilinear",
                       "color": "RGB", "mean": list(pre.mean), "std": list(pre.std)},
        "parity": report.to_json() | {"runtime": runtime},
        "versions": mf.all_versions(),
        "calibration": calib.describe(cfg.calib_method or _method(exported)) if calib else None,
        "target_details": exported.details,
        "build": {"config": cfg.to_json(), "seconds": round(build_s, 2), "created": mf.now(), "machine": mf.machine()},
    }


def _method(exported) -> str | None:
    q = exported.details.get("quantization") or {}
    return q.get("method") or q.get("calibration")


def _publish(artifact: Path, manifest: dict, dest: Path) -> dict:
    """Move the verified artifact into place, then write its manifest (atomically, last)."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / artifact.name
    old = dest / mf.MANIFEST
    if old.exists():  # an older build's manifest must never describe the new file
        old.unlink()
    os.replace(artifact, final)
    mf.write_json_atomic(dest / mf.MANIFEST, manifest)
    log.info("wrote %s (%d bytes) and %s", final, manifest["size_bytes"], dest / mf.MANIFEST)
    return manifest


def verify(out_dir: str | Path, eval_dir: str | None = None, budget: dict | None = None) -> list[dict]:
    """Re-run the parity check of every artifact in a build folder. Returns the fresh parity
    reports; raises ParityError when any artifact misses its budget or no longer matches its hash."""
    manifests = mf.find(Path(out_dir))
    if not manifests:
        raise UserError(f"no manifest.json in {out_dir} or its subfolders; is it an `edge build` output folder?")
    reports, failures = [], []
    for path in manifests:
        m = mf.read(path)
        try:
            cfg = BuildConfig.from_json(m["build"]["config"])
            artifact = path.parent / m["artifact"]
        except (KeyError, TypeError) as e:
            raise UserError(f"{path} is not an edge manifest (missing {e})") from None
        if not artifact.is_file():
            failures.append(f"{artifact} is missing")
            continue
        if mf.sha256(artifact) != m["sha256"]:
            failures.append(f"{artifact} does not match the sha256 in its manifest")
            continue
        cfg = BuildConfig.from_json({**cfg.to_json(), "eval": eval_dir or cfg.eval})
        spec = resolve_model(cfg.model, cfg.input_shape)
        shape = tuple(m["input"]["shape"]) if m["input"]["layout"] == "NCHW" else _nchw(m["input"]["shape"])
        model = load_model(spec, cfg.weights, shape[2])
        _, parity = calibration_and_parity(cfg.calib, spec.preprocess.at(shape[2]), shape,
                                           cfg.precision == "int8", cfg.eval is not None)
        check = _check_set(cfg, spec, shape, TorchRunner(model), parity)
        runner = TARGETS.get(m["target"]).load(artifact, m)
        b = {**m["parity"]["budget"], **(budget or {})}
        report = compare(check.ref, runner.run(check.x), m["precision"], b, check.source, check.labels)
        log.info("%s: %s", artifact, _summary(report))
        reports.append({"artifact": str(artifact), **report.to_json()})
        if not report.passed:
            failures.append(f"{artifact.name}: " + "; ".join(report.failures))
    if failures:
        raise ParityError("verify failed: " + " | ".join(failures))
    return reports


def _nchw(shape):
    return (shape[0], shape[3], shape[1], shape[2])

