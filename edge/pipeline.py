"""The build pipeline: the stages of edge.stages in order (load, training stages, then per target
quantize, export, check, fallback, then publish), and `edge verify`, which re-runs the check of
a finished build from what the build folder holds as data."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from edge import interrupts
from edge import manifest as mf
from edge.config import BuildConfig
from edge.errors import ConversionError, ParityError, UserError
from edge.stages import STAGES, ArtifactState, BuildState
from edge.targets import TARGETS

log = logging.getLogger("edge")

STAGING = ".edge-build-"  # + the building process's pid: the staging folder inside --out


def resolve_targets(names) -> list:
    """The targets named; "all" is every installed target (the others are named, with why, at INFO)."""
    names = list(names)
    if names == ["all"]:
        found = []
        for t in TARGETS:
            why = t.available()
            if why:
                log.warning("--target all: skipping %s (%s)", t.name, why)
            else:
                found.append(t)
        if not found:
            raise UserError("--target all: no target is installed; see `edge targets`")
        return found
    return [TARGETS.get(n) for n in names]


def build(config: BuildConfig) -> list[dict]:
    """Build every target of `config`; returns the manifests. A target whose conversion fails or
    whose artifact misses its budget does not stop the others: the artifacts that passed are
    published, then ConversionError (any conversion failed) or ParityError says which failed and
    which were published. Bad input (UserError), a full disk or an interrupt stop the build at once."""
    targets = resolve_targets(config.targets)
    for t in targets:
        t.check(config.precision, config.io, config.calib_method)
    out = Path(config.out)
    _prepare_out(out)
    for t in targets:  # refuse before a long build, not after it
        mf.replaceable(out / t.name)
    _remove_stale_staging(out)
    state = BuildState(config, out)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING}{os.getpid()}-", dir=out) as staging:
        state.staging = Path(staging).resolve()  # exporters may run tools in other working folders
        for stage in STAGES.in_order("model"):
            _run(stage, state)
        for i, target in enumerate(targets, 1):
            a = ArtifactState(target, state.staging / f"{state.spec.name}.{config.precision}{target.suffix}")
            state.artifacts.append(a)
            why = target.supports(state.spec, config.precision)
            if why:
                raise UserError(f"target {target.name} cannot build {state.spec.name} {config.precision}: {why}")
            t0 = time.perf_counter()
            log.info("[%d/%d] %s %s", i, len(targets), target.name, config.precision)
            try:
                for stage in STAGES.in_order("artifact"):
                    if stage.enabled(state, a):
                        record = stage.run(state, a)
                        a.records.append({"stage": stage.name, **(record or {})})
                    interrupts.check()  # a Ctrl-C that a library swallowed: nothing is published
            except ConversionError as e:  # this target failed; the other targets carry on
                interrupts.check()  # unless Ctrl-C is why
                a.error = str(e)
                if len(targets) > 1:
                    log.warning("%s %s failed: %s", target.name, config.precision, e)
            a.seconds = time.perf_counter() - t0
        for stage in STAGES.in_order("build"):
            _run(stage, state)
    return _outcome(state)


def _outcome(state: BuildState) -> list[dict]:
    """The published manifests, or the error that names every failure and what was published."""
    precision = state.config.precision
    published = state.published
    failures = [f"{a.target.name} {precision}: " + (a.error or "; ".join(a.report.failures)
                                                     + (f" (best found: {a.fallback['best']})" if a.fallback else ""))
                for a in state.artifacts if not a.passed]
    if not failures:
        return published
    done = f"; published: {', '.join(m['target'] for m in published)}" if published else "; nothing published"
    if any(a.error for a in state.artifacts):
        raise ConversionError("build failed: " + " | ".join(failures) + done)
    raise ParityError("parity check failed: " + " | ".join(failures) + done)


def _run(stage, state: BuildState) -> None:
    interrupts.check()
    if stage.enabled(state):
        record = stage.run(state)
        if stage.scope == "model" and record is not None:
            state.records.append({"stage": stage.name, **_settings(stage, state), **(record or {})})


def _settings(stage, state: BuildState) -> dict:
    return {"config": state.config.stage(stage.name).to_json()} if stage.Config else {}


def _remove_stale_staging(out: Path) -> None:
    """Remove the staging folders that builds killed before they could clean up left in `out`:
    those whose process is gone. Folders of a build still running (another process) stay."""
    for prefix in (STAGING, ".edge-old-"):
        for d in out.glob(f"{prefix}*"):
            pid = d.name[len(prefix):].split("-", 1)[0]
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
