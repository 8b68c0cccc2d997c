"""`edge bench PATH...`: time artifacts with the on-device runner (edge/device/runner.py), each in
a fresh process, so that one runtime's thread pools and memory do not colour another's figures.

PATH is an artifact, or a build folder with manifest.json files (in it or in its subfolders)."""
from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge import manifest as mf
from edge.device import RUNNER, runner_error
from edge.errors import EdgeError, UserError, require

if TYPE_CHECKING:
    from edge.device.remote import Device

log = logging.getLogger("edge")
SCHEMA = "edge-bench/1"


@dataclass(frozen=True)
class Job:
    """One artifact to time, with its manifest when it has one."""

    artifact: Path
    manifest_path: Path | None = None
    manifest: dict | None = None

    def summary(self) -> dict | None:
        m = self.manifest
        return {k: m.get(k) for k in ("target", "precision", "model")} if m else None

    def runner_options(self) -> list[str]:
        """--backend from the target registry when the manifest names a known target; otherwise
        the runner goes by the artifact's suffix."""
        from edge.targets import TARGETS

        target = (self.manifest or {}).get("target")
        return ["--backend", TARGETS.get(target).runner_backend] if target in TARGETS else []


def bench(paths: list[str], *, threads: int | None = None, runs: int = 50, warmup: int = 5,
          pin: str | None = None, input_shape: tuple | None = None, progress: bool = True,
          device: Device | None = None, profile: bool = False) -> list[dict]:
    """Time every artifact under `paths`, each in its own process; returns the runner's result
    dicts, each with a `manifest` summary (target, precision, model; None without a manifest)
    and `device` {name, emulated}. `pin` is a CPU list for taskset ("0", "2-3"); `device` runs
    them on a board over ssh or on the emulated Pi (edge.device.remote). `profile` adds each
    result's per-operator profile (runner.py --profile). Raises UserError for bad input."""
    _check_counts(threads, runs, warmup)
    if pin is not None and device is not None:
        raise UserError("--pin pins host CPUs; on a device, run runner.py under taskset there instead")
    jobs = [job for p in paths for job in collect(Path(p))]
    prefix = _taskset(pin) if pin is not None else []
    options = _runner_options(threads, runs, warmup, input_shape) + (["--profile"] if profile else [])
    for job in jobs if device else ():
        device.check(job.artifact)
    results = []
    for i, job in enumerate(jobs, 1):
        if progress:
            where = f" on {device.label}" if device else ""
            print(f"edge: bench [{i}/{len(jobs)}] {_label(job.artifact)}{where}: {warmup} warm-up + {runs} timed runs",
                  file=sys.stderr, flush=True)
        job_options = [*options, *job.runner_options()]
        if device is None:
            r = run_runner(job, prefix, job_options) | {"device": {"name": "host", "emulated": False}}
        else:
            r = device.run(job.artifact, job.manifest_path, job_options)
            r |= {"device_path": r["path"], "path": str(job.artifact.resolve()),
                  "device": {"name": device.label, "emulated": device.emulated}}
        results.append(r | {"manifest": job.summary()})
    return results


def collect(path: Path) -> list[Job]:
    """The artifacts a PATH names: itself, or every artifact with a manifest below a folder (an
    artifact there that no manifest describes is skipped, with a line that says so). An
    artifact without a manifest is timed as it declares its inputs; the runner says when it
    needs an input shape (dynamic dims, a .ptl)."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_dir():
        jobs = [_job_from_manifest(m) for m in _manifests(path)]
        for skipped in _undescribed(path, jobs):
            log.warning("bench: skipped %s: no manifest describes it (time it on its own: edge bench %s)",
                        skipped, shlex.quote(str(skipped)))
        return jobs
    beside = path.parent / mf.MANIFEST
    if beside.is_file():
        m = mf.read(beside)
        if m.get("artifact") == path.name:
            return [Job(path, beside, m)]
    return [Job(path)]


def _visible(folder: Path, path: Path) -> bool:
    """Not in a hidden folder (a build's staging) and not hidden itself."""
    return not any(part.startswith(".") for part in path.relative_to(folder).parts)


def _manifests(folder: Path) -> list[Path]:
    found = []
    for p in sorted(p for p in folder.rglob(mf.MANIFEST) if p.is_file() and _visible(folder, p)):
        if mf.foreign(p):  # another tool's manifest.json (a web app's)
            log.warning("bench: skipped %s: not an edge manifest", p)
        else:
            found.append(p)
    if not found:
        raise UserError(f"no manifest.json in {folder} or its subfolders; is it an `edge build` output folder?")
    return found


def _undescribed(folder: Path, jobs: list[Job]) -> list[Path]:
    """Files below `folder` with a target's artifact suffix (the target registry's) that no
    manifest describes."""
    from edge.targets import TARGETS

    suffixes = {t.suffix for t in TARGETS}
    described = {j.artifact.resolve() for j in jobs}
    return sorted(p for p in folder.rglob("*") if p.suffix in suffixes and p.is_file() and _visible(folder, p)
                  and p.resolve() not in described)


def _job_from_manifest(path: Path) -> Job:
    m = mf.read(path)
    if not isinstance(m.get("artifact"), str):
        raise UserError(f"{path} is not an edge manifest (no 'artifact')")
    artifact = mf.member(path.parent, m["artifact"], "artifact")
    if not artifact.is_file():
        raise UserError(f"{path} describes {m['artifact']}, which is missing")
    mf.check_inputs(m, path)
    return Job(artifact, path, m)


def _check_counts(threads: int | None, runs: int, warmup: int) -> None:
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise UserError(f"bench needs runs >= 1, warmup >= 0 and threads >= 1 "
                        f"(got runs={runs}, warmup={warmup}, threads={threads})")


def _taskset(pin: str) -> list[str]:
    """The taskset prefix that pins the runner to the CPUs in `pin`, after checking they exist."""
    if shutil.which("taskset") is None:
        raise UserError("--pin needs taskset, which is not installed (util-linux); drop --pin or install it")
    cpus = _cpu_list(pin)
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if not cpus:
        raise UserError(f"--pin {pin!r} names no CPU; pass a CPU list like 0 or 0,2-3")
    if not cpus <= available:
        raise UserError(f"--pin {pin}: CPUs {sorted(cpus - available)} are not available here; "
                        f"choose from {sorted(available)}")
    return ["taskset", "-c", pin]


def _cpu_list(pin: str) -> set[int]:
    """'0,2-3' -> {0, 2, 3}."""
    cpus: set[int] = set()
    try:
        for part in pin.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--pin {pin!r} is not a CPU list like 0 or 0,2-3") from None
    return cpus


def _runner_options(threads: int | None, runs: int, warmup: int, input_shape: tuple | None) -> list[str]:
    opts = ["--runs", str(runs), "--warmup", str(warmup)]
    if threads is not None:
        opts += ["--threads", str(threads)]
    if input_shape is not None:  # a shape, or (input name, shape)
        name, dims = input_shape if isinstance(input_shape[0], str) else ("", input_shape)
        opts += ["--input-shape", (f"{name}=" if name else "") + ",".join(str(d) for d in dims)]
    return opts


def run_runner(job: Job, prefix: list[str], options: list[str]) -> dict:
    """Run runner.py on one artifact in a fresh process and return its JSON result."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [*prefix, sys.executable, str(RUNNER), *options, "--json", str(out)]
        if job.manifest_path is not None:
            cmd += ["--manifest", str(job.manifest_path)]
        cmd += ["--", str(job.artifact)]  # an artifact named -x.tflite is not an option
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode != 0:
            raise _failure(job.artifact, proc)
        return json.loads(out.read_text())


def _failure(artifact: Path, proc: subprocess.CompletedProcess) -> EdgeError:
    """The runner's one-line error as a UserError (exit 2) or an EdgeError (anything else)."""
    if proc.returncode < 0:
        return EdgeError(f"the runner crashed on {artifact} (signal {-proc.returncode})")
    cls = UserError if proc.returncode == 2 else EdgeError
    return cls(f"bench {artifact}: {runner_error(proc.stderr, proc.returncode)}")


def format_table(results: list[dict]) -> str:
    """A terminal table, one row per result."""
    header = ("artifact", "device", "format", "precision", "size MB", "load ms", "first ms", "mean ms", "std",
              "p50", "p90", "p99", "peak RSS MB", "threads")
    rows = [header, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_profile(r: dict, top: int = 12) -> str:
    """One artifact's per-operator profile: time by op type, then the slowest nodes (the node
    names carry the PyTorch module path the exporter gave them)."""
    tabulate = require("tabulate", "the profile's tables", extra="report").tabulate
    p = r.get("profile") or {}
    head = f"profile of {_label(Path(r['path']))}"
    if not p.get("available"):
        return f"{head}: not available: {p.get('why', 'no profile')}"
    base = p.get("p50_interleaved_ms") or p["p50_ms"]
    lines = [f"{head} ({p['source']}, {p['runs']} runs): operators sum to {_ms(p['sum_ms'])} ms per run, "
             f"{p['sum_vs_p50']:.2f}x the p50 of {_ms(base)} ms of unprofiled runs interleaved with them",
             tabulate([(o["op"], o["nodes"], _ms(o["ms"]), f"{100 * o['share']:.1f}%") for o in p["by_op_type"][:top]],
                      ("op type", "nodes", "ms per run", "share"), tablefmt="simple", disable_numparse=True),
             *([tabulate([(b["block"], _ms(b["ms"]), f"{100 * b['share']:.1f}%") for b in p["by_block"][:top]],
                         ("PyTorch block", "ms per run", "share"), tablefmt="simple", disable_numparse=True)]
               if p["by_block"] else []),  # node names without module scopes (ETDump's XNNPACK ops) have none
             tabulate([(n["node"], n["op"], n["module"] or "-", _ms(n["ms"]), f"{100 * n['share']:.1f}%")
                       for n in p["by_node"][:top]],
                      ("node (slowest first)", "op type", "PyTorch module", "ms per run", "share"), tablefmt="simple",
                      disable_numparse=True)]
    return "\n\n".join(lines)


def _row(r: dict) -> tuple[str, ...]:
    lat, rss = r["latency_ms"], r.get("peak_rss_bytes")
    # without a manifest, the runner's reading of the artifact's tensor types (int8, fp16, float)
    precision = (r.get("manifest") or {}).get("precision") or r.get("precision") or "-"
    dev = r.get("device") or {"name": "host"}
    where = dev["name"] + (" (emulated)" if dev.get("emulated") else "")
    return (_label(Path(r["path"])), where, r["format"], precision, f"{r['size_bytes'] / 1e6:.2f}", _ms(r["load_ms"]),
            _ms(r["first_inference_ms"]), *(_ms(lat[k]) for k in ("mean", "std", "p50", "p90", "p99")),
            f"{rss / 1e6:.1f}" if rss is not None else "-",
            str(r["threads"]) if r.get("threads") is not None else "default")


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _label(artifact: Path) -> str:
    """parent/file: enough to tell the targets of one build apart."""
    return f"{artifact.parent.name}/{artifact.name}" if artifact.parent.name else artifact.name


def host_environment() -> dict:
    """The machine the bench ran on, with tool versions and the load at the time."""
    return {"date": mf.now(), "machine": mf.machine(), "python": platform.python_version(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "versions": mf.all_versions()}


def document(results: list[dict]) -> dict:
    """The JSON document of a bench: {"schema", "results", "environment"}."""
    return {"schema": SCHEMA, "results": results, "environment": host_environment()}


def write_json(results: list[dict], path: str | Path) -> None:
    """Write the bench's JSON document atomically to `path`."""
    try:
        mf.write_json_atomic(Path(path), document(results))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); pass a writable path") from None
