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
from edge.targets.base import Exported

log = logging.getLogger("edge")


@dataclass
class Check:
    """The samples an artifact is checked on, with the reference's outputs on them."""

    x: np.ndarray
    ref: np.ndarray
    source: str
    labels: np.ndarray | None = None


STAGING = ".edge-build-"  # + the building process's pid: the staging folder inside --out


def _remove_stale_staging(out: Path) -> None:
    """Remove the staging folders that builds killed before they could clean up left in `out`:
    those whose process is gone. Folders of a build still running (another process) stay."""
    for d in out.glob(f"{STAGING}*"):
        pid = d.name[len(STAGING):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            log.info("removed %s, left behind by a build that was killed", d)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
    _remove_stale_staging(out)

    model = load_model(spec, config.weights, shape[2])
    pre = spec.preprocess.at(shape[2])
    int8 = config.precision == "int8"
    calib, parity = calibration_and_parity(config.calib, pre, shape, int8, config.eval is not None)
    reference = TorchRunner(model)
    check = _check_set(config, spec, shape, reference, parity)
    budget = {**spec.budget(config.precision), **config.budget}
    qat = _qat(config, spec, model, shape, calib) if config.qat else None

    manifests, failures = [], []
    with tempfile.TemporaryDirectory(prefix=f"{STAGING}{os.getpid()}-", dir=out) as staging:
        staging = Path(staging).resolve()  # exporters may run tools in other working folders
        ctx = ExportContext(qat.float_model if qat else model, shape, staging, calib.x if calib else None,
                            config.calib_method, config.io, config.opset, qat=qat)
        for i, target in enumerate(targets, 1):
            t0 = time.perf_counter()
            log.info("[%d/%d] %s %s: exporting", i, len(targets), target.name, config.precision)
            exported = target.export(ctx, config.precision, staging / f"{spec.name}.{config.precision}{target.suffix}")
            attempt = _attempt(target, exported, config.precision, budget, check)
            log.info("[%d/%d] %s %s: %s", i, len(targets), target.name, config.precision, _summary(attempt.report))
            fallback = None
            if not attempt.report.passed and _wants_fallback(config, target, attempt.report):
                attempt, fallback = _fall_back(target, ctx, attempt, model, budget, check)
            exported, runner, report = attempt.exported, attempt.runner, attempt.report
            if not report.passed:
                best = f" (best found: {fallback['best']})" if fallback else ""
                failures.append(f"{target.name} {config.precision}: " + "; ".join(report.failures) + best)
                continue
            build_s = time.perf_counter() - t0
            dest = out if len(targets) == 1 else out / target.name
            m = _manifest(config, spec, shape, target, exported, report, calib, runner.runtime, build_s)
            if fallback:
                m["fallback"] = fallback
            m["qat"] = qat.record if qat else None
            manifests.append(_publish(exported.path, m, dest))
    if failures:
        raise ParityError("parity check failed: " + " | ".join(failures))
    return manifests


@dataclass
class Attempt:
    """One exported artifact, its runner and its parity report (with the time per sample)."""

    exported: "Exported"
    runner: object
    report: ParityReport
    ms_per_sample: float


def _attempt(target, exported, precision: str, budget: dict, check: Check) -> Attempt:
    runner = target.load(exported.path, {"precision": precision, "target_details": exported.details})
    t0 = time.perf_counter()
    y = runner.run(check.x)
    ms = (time.perf_counter() - t0) * 1e3 / len(check.x)
    return Attempt(exported, runner, compare(check.ref, y, precision, budget, check.source, check.labels), ms)


def _wants_fallback(cfg: BuildConfig, target, report: ParityReport) -> bool:
    """--max-drop was given, the int8 artifact missed it, and the target can keep layers in float."""
    if cfg.precision != "int8" or "max_top1_drop" not in cfg.budget or "top1_drop_pp" not in report.figures:
        return False
    if not getattr(target, "float_fallback", False):
        log.warning("%s int8 missed --max-drop and this target cannot keep layers in float; "
                    "try --target onnx", target.name)
        return False
    return True


FALLBACK_STEPS = (1, 2, 4, 8, 16, 32, 64)  # layers kept in float per attempt, most sensitive first
FALLBACK_MAX_FRACTION = 0.5  # beyond half the layers in float, it is no longer an int8 model
SENSITIVITY_SAMPLES = 16


def _fall_back(target, ctx: ExportContext, first: Attempt, model, budget: dict, check: Check) -> tuple[Attempt, dict]:
    """Keep the layers that add the most int8 error in float, more at each attempt, until the
    budget is met. Layers are ranked by measured sensitivity (quantize/sensitivity.py: the SQNR
    each layer loses against PyTorch, on calibration samples). Returns the first attempt that
    passes, or the best one (smallest drop) with the record of every attempt."""
    from dataclasses import replace

    from edge.quantize import sensitivity as sens

    x = ctx.calib[:SENSITIVITY_SAMPLES]
    ranked = [l for l in sorted(sens.layers(first.exported.path, model, x) or [],
                                key=lambda l: -(l.local_drop_db or 0.0)) if l.nodes]
    log.info("%s int8 missed the budget (top-1 drop %.2f pp); keeping its most sensitive layers in float: %s",
             target.name, first.report.figures["top1_drop_pp"],
             ", ".join(f"{l.module} (-{l.local_drop_db or 0.0:.1f} dB)" for l in ranked[:5]))

    def record(a: Attempt, kept: list) -> dict:
        return {"kept_float": [l.module for l in kept], "top1_drop_pp": round(a.report.figures["top1_drop_pp"], 3),
                "top1": a.report.figures.get("top1"), "size_bytes": a.exported.path.stat().st_size,
                "ms_per_sample": round(a.ms_per_sample, 3), "passed": a.report.passed}

    attempts, best, best_kept = [record(first, [])], first, []
    cap = max(1, int(len(ranked) * FALLBACK_MAX_FRACTION))
    for k in sorted({min(k, cap) for k in FALLBACK_STEPS}):
        kept = ranked[:k]
        path = first.exported.path.with_name(f"{first.exported.path.stem}.float{k}{first.exported.path.suffix}")
        kctx = replace(ctx, keep_float=tuple(n for l in kept for n in l.nodes))
        a = _attempt(target, target.export(kctx, "int8", path), "int8", budget, check)
        attempts.append(record(a, kept))
        log.info("%s int8 with %d layer(s) in float: %s", target.name, k, _summary(a.report))
        if a.report.figures["top1_drop_pp"] < best.report.figures["top1_drop_pp"] or a.report.passed:
            best, best_kept = a, kept
        if a.report.passed:
            break
    if best is not first:
        os.replace(best.exported.path, first.exported.path)
        best.exported.path = first.exported.path
    figures = best.report.figures
    return best, {
        "reason": f"int8 missed --max-drop {budget['max_top1_drop']:g} pp (top-1 drop "
                  f"{first.report.figures['top1_drop_pp']:.2f} pp)",
        "ranking": "local SQNR loss against PyTorch per layer (edge explain), on "
                   f"{len(x)} calibration samples",
        "kept_float": [l.module for l in best_kept], "kept_float_nodes": [n for l in best_kept for n in l.nodes],
        "top1_drop_pp": round(figures["top1_drop_pp"], 3), "size_bytes": best.exported.path.stat().st_size,
        "int8_size_bytes": attempts[0]["size_bytes"], "ms_per_sample": round(best.ms_per_sample, 3),
        "int8_ms_per_sample": attempts[0]["ms_per_sample"],
        "latency_note": "in-process, batch 1, over the evaluation images; use edge bench for figures to compare",
        "attempts": attempts,
        "best": f"top-1 drop {figures['top1_drop_pp']:.2f} pp with {len(best_kept)} layer(s) in float: "
                f"{', '.join(l.module for l in best_kept) or 'none'}; at most {cap} of {len(ranked)} layers "
                "may stay in float",
    }


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
        spec, shape, model = reference_model(m, cfg)
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


def reference_model(m: dict, cfg: BuildConfig | None = None) -> tuple[ModelSpec, tuple, "torch.nn.Module"]:
    """(spec, NCHW input shape, fp32 eval-mode model) of the build a manifest describes."""
    cfg = cfg or BuildConfig.from_json(m["build"]["config"])
    spec = resolve_model(cfg.model, cfg.input_shape)
    shape = tuple(m["input"]["shape"]) if m["input"]["layout"] == "NCHW" else _nchw(m["input"]["shape"])
    return spec, shape, load_model(spec, cfg.weights, shape[2])


def _nchw(shape):
    return (shape[0], shape[3], shape[1], shape[2])

