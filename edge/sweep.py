"""`edge sweep PLAN`: build and time a grid of models x targets x precisions on devices, so that
`edge report` can say which artifact to ship.

A plan is a TOML file (paths in it are relative to the plan's folder):

    models = ["efficientnet_lite0",                      # registered, or "path/to/file.py:factory",
              {name = "mobilenetv2", weights = "random"}]  # or a table: the name and its own [build] options
    targets = ["all"]                                    # or ["onnx", "tflite", ...]
    precisions = ["fp32", "int8"]
    devices = ["host", "pi-emu"]                         # host, pi-emu[:trixie], ssh://user@host[:port]
    out = "sweeps/mine"                                  # or --out

    [build]                                              # what `edge build` takes, by option name
    weights = "imagenet"
    calib = "data/calib"
    eval = "data/eval"

    [budget]                                             # parity budgets (as edge build's flags)
    max_top1_drop = 1.0

    [bench]
    threads = [1, 2]
    runs = 30
    warmup = 5
    rounds = 3                                           # each artifact timed once per round

Every cell is a build (model, precision, target) under OUT/cells/MODEL/PRECISION/TARGET, then a
bench per device and thread count beside it (bench-DEVICE-Nt.json). A cell records the key of its
inputs (its settings, the model file, weights and data fingerprints, the tools' versions): when
a rerun finds the same key, the cell is not built or timed again. A cell that fails records its
one-line reason and the others go on. Builds come first, then the benches one at a time, so that
no bench overlaps a build or another bench on this machine; the load at each bench is recorded,
and a bench timed while the machine was busy is flagged.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import manifest as mf
from edge.errors import EdgeError, UserError

log = logging.getLogger("edge")
SCHEMA = 1
TOP_KEYS = {"models", "targets", "precisions", "devices", "out", "build", "budget", "bench"}
BUILD_KEYS = {"weights", "calib", "calib_method", "eval", "train", "io", "input_shape", "tasks", "opset",
              "qat", "epochs", "lr", "max_steps"}
PATH_KEYS = ("calib", "eval", "train")
BUDGET_KEYS = {"max_abs", "max_rel_abs", "min_cosine", "min_sqnr_db", "min_top1_agreement", "min_top5_overlap",
               "max_top1_drop"}
BENCH_KEYS = {"threads", "runs", "warmup", "rounds"}
BUSY = 0.25  # another process's share of the CPUs in the second before a bench above which it is flagged


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    targets: tuple[str, ...]
    precisions: tuple[str, ...]
    devices: tuple[str, ...] = ("host",)
    build: dict[str, Any] = field(default_factory=dict)
    model_build: dict[str, dict[str, Any]] = field(default_factory=dict)  # a model's own [build] options
    budget: dict[str, float] = field(default_factory=dict)
    threads: tuple[int | None, ...] = (1,)
    runs: int = 30
    warmup: int = 5
    rounds: int = 1
    out: str | None = None
    source: str = ""  # the plan file, for messages

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}


@dataclass(frozen=True)
class Cell:
    model: str
    precision: str
    target: str

    @property
    def name(self) -> str:
        return f"{_model_name(self.model)}/{self.precision}/{self.target}"


def _model_name(model: str) -> str:
    return model.split(":")[0].rsplit("/", 1)[-1].removesuffix(".py")


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan; UserError (one line) for anything wrong, before any work."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such plan file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the plan ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    where = str(path)
    _known(data, TOP_KEYS, where)
    for table, keys in (("build", BUILD_KEYS), ("budget", BUDGET_KEYS), ("bench", BENCH_KEYS)):
        if not isinstance(data.get(table, {}), dict):
            raise UserError(f"{where}: [{table}] must be a table")
        _known(data.get(table, {}), keys, f"{where} [{table}]")
    base = path.parent
    build = _paths(dict(data.get("build", {})), base)
    models, model_build = [], {}
    entries = _names(data, "models", where, tables=True)
    for i, entry in enumerate(entries):
        own = {}
        if isinstance(entry, dict):
            own = {k: v for k, v in entry.items() if k != "name"}
            if not isinstance(entry.get("name"), str) or not entry["name"]:
                raise UserError(f'{where}: models[{i}] needs a name, e.g. {{name = "mobilenetv2", weights = "random"}}')
            _known(own, BUILD_KEYS, f"{where} models[{i}] ({entry['name']})")
            entry = entry["name"]
        name = str(base / entry) if ".py:" in entry else entry
        models.append(name)
        if own:
            model_build[name] = _paths(own, base)
    models = tuple(dict.fromkeys(models))
    bench = data.get("bench", {})
    threads = bench.get("threads", [1])
    threads = tuple(threads if isinstance(threads, list) else [threads])
    if not all(t is None or (isinstance(t, int) and t > 0) for t in threads):
        raise UserError(f"{where} [bench]: threads must be positive integers, e.g. threads = [1, 2]")
    for k in ("runs", "warmup", "rounds"):
        if k in bench and (not isinstance(bench[k], int) or bench[k] < (0 if k == "warmup" else 1)):
            raise UserError(f"{where} [bench]: {k} must be a whole number{'' if k == 'warmup' else ' >= 1'}")
    out = data.get("out")
    plan = Plan(models=models, model_build=model_build, targets=_names(data, "targets", where),
                precisions=_names(data, "precisions", where), devices=_names(data, "devices", where, ("host",)), build=build, budget=dict(data.get("budget", {})),
                threads=threads, runs=bench.get("runs", 30), warmup=bench.get("warmup", 5),
                rounds=bench.get("rounds", 1),
                out=os.path.normpath(base / out) if isinstance(out, str) else None, source=where)
    _check_names(plan)
    return plan


def _paths(options: dict, base: Path) -> dict:
    """Data and weights paths of a plan, relative to the plan's folder."""
    for k in PATH_KEYS:
        if isinstance(options.get(k), str):
            options[k] = str(base / options[k])
    if isinstance(options.get("weights"), str) and options["weights"] not in ("imagenet", "random"):
        options["weights"] = str(base / options["weights"])
    return options


def _known(table: dict, keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(keys))}")


def _names(data: dict, key: str, where: str, default: tuple[str, ...] | None = None, tables: bool = False) -> tuple:
    value = data.get(key, default)
    if value is None:
        example = {"models": "mobilenetv2", "targets": "tflite", "precisions": "int8"}.get(key, "host")
        raise UserError(f'{where}: {key} is missing; e.g. {key} = ["{example}"]')
    value = [value] if isinstance(value, str) else value
    ok = (str, dict) if tables else str
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, ok) and v for v in value):
        raise UserError(f"{where}: {key} must be a non-empty list of names" + (" or {name = ...} tables" if tables else ""))
    return tuple(value) if tables else tuple(dict.fromkeys(value))


def _check_names(plan: Plan) -> None:
    """Every model, target, precision and build option known, before any work starts."""
    from edge.config import BuildConfig
    from edge.models import MODELS
    from edge.precisions import PRECISIONS
    from edge.targets import TARGETS

    where = plan.source
    for m in plan.models:
        if ".py:" in m:
            if not Path(m.split(":")[0]).is_file():
                raise UserError(f"{where}: model file {m.split(':')[0]} not found (paths are relative to the plan)")
        elif m not in MODELS:
            raise UserError(f"{where}: unknown model {m!r}; see `edge models`, or name a file.py:factory")
    for t in plan.targets:
        if t != "all" and t not in TARGETS:
            raise UserError(f"{where}: unknown target {t!r}; use {', '.join(TARGETS.names())} or all")
    for p in plan.precisions:
        if p not in PRECISIONS:
            raise UserError(f"{where}: unknown precision {p!r}; use {', '.join(PRECISIONS.names())}")
    for m in plan.models:
        try:
            BuildConfig(model=m, **_build_options(plan, plan.precisions[0], m))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None


def _build_options(plan: Plan, precision: str, model: str) -> dict:
    opts = dict(plan.build) | plan.model_build.get(model, {})
    if isinstance(opts.get("input_shape"), list):
        shapes = opts["input_shape"]
        opts["input_shape"] = tuple(tuple(s) for s in shapes) if shapes and isinstance(shapes[0], list) \
            else tuple(shapes)
    if precision != "int8":
        opts.pop("calib", None), opts.pop("calib_method", None), opts.pop("qat", None)
    return opts | {"precision": precision, "budget": dict(plan.budget)}


def grid(plan: Plan) -> tuple[list[Cell], list[dict]]:
    """The cells to build, and the combinations skipped with the reason (a target without that
    precision)."""
    from edge.pipeline import resolve_targets

    cells, skipped = [], []
    targets = [t for name in plan.targets for t in resolve_targets((name,))]
    for model in plan.models:
        for precision in plan.precisions:
            for t in dict.fromkeys(targets):
                cell = Cell(model, precision, t.name)
                if precision not in t.precisions:
                    skipped.append({"cell": cell.name, "reason": t.unsupported.get(precision)
                                    or f"{t.name} has no {precision}"})
                else:
                    cells.append(cell)
    return cells, skipped


def devices(plan: Plan) -> dict[str, Any]:
    """Each device of the plan, checked now: the emulated Pi set up, an ssh board answering."""
    from edge.device.remote import parse

    found = {}
    for spec in plan.devices:
        if spec == "host":
            found[spec] = None
            continue
        dev = parse(spec)
        if getattr(dev, "emulated", False):
            from edge.device import piemu

            if piemu.info(dev.root) is None:
                raise UserError(f"{plan.source}: the emulated Pi is not set up ({dev.root}); run: edge device setup {spec}")
            piemu.check_host()
        else:
            _reach(dev)
        found[spec] = dev
    return found


def _reach(dev) -> None:
    import subprocess

    try:
        proc = subprocess.run(dev.ssh_command("true"), capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise UserError(f"cannot reach {dev.label}: no answer within 30 s") from None
    if proc.returncode != 0:
        last = ([ln for ln in proc.stderr.splitlines() if ln.strip()] or [f"exit code {proc.returncode}"])[-1]
        raise UserError(f"cannot reach {dev.label}: {last.removeprefix('ssh: ')} (check the host, port, user and key)")


def fingerprint(path: str | None) -> str | None:
    """A file's sha256, or a folder's digest of its files' names, sizes and modification times
    (cheap enough to take on every run; a changed photo changes its size or time)."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return None


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of edge's own Python files (edge, its models, quantizers and targets): a change to
    the code that builds an artifact changes every cell's key, as a new version would."""
    import edge
    import edge.models
    import edge.quantize
    import edge.targets

    h = hashlib.sha256()
    for pkg in (edge, edge.models, edge.quantize, edge.targets):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{pkg.__name__}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def build_key(plan: Plan, cell: Cell) -> str:
    from edge.targets import TARGETS
    from edge.targets.base import pkg_version

    opts = _build_options(plan, cell.precision, cell.model)
    inputs = {"cell": dataclasses.asdict(cell), "options": opts,
              "model_file": fingerprint(cell.model.split(":")[0]) if ".py:" in cell.model else None,
              "weights": fingerprint(opts.get("weights")) if opts.get("weights") not in (None, "imagenet", "random")
              else opts.get("weights"),
              "data": {k: fingerprint(opts.get(k)) for k in PATH_KEYS},
              "versions": {"edge": pkg_version("edge"), "edge_code": code_digest(),
                           **TARGETS.get(cell.target).versions()}}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def run(plan: Plan, out: Path, *, progress: bool = True, ray: str | None = None, jobs: int = 1,
        retime: bool = False) -> dict:
    """Build and time every cell (skipping those whose key has not changed); returns and writes
    OUT/sweep.json: {"schema", "plan", "rows", "failed", "skipped", "environment"}. With `ray`
    (auto or a cluster's address) the builds and benches run as Ray tasks (edge.sweep_ray), and
    their files come back here; without, `jobs` builds run at once in worker processes. `retime`
    times every artifact again (rebuilding none), so that a table's timings all come from one run."""
    from edge.benchmark import host_environment
    from edge.progress import Counter

    cells, skipped = grid(plan)
    if ray is None:
        devices(plan)
        from edge.sweep_local import LocalPool as Pool
    else:
        from edge.sweep_ray import RayPool as Pool
    pool = Pool(plan, ray) if ray is not None else Pool(plan, jobs)
    out.mkdir(parents=True, exist_ok=True)
    # an emulated device's timings say nothing (not reported): its outputs are checked once, at
    # the first thread count, in one run
    benches = [(c, d, t) for c in cells for d in plan.devices
               for t in (plan.threads[:1] if d.startswith("pi-emu") else plan.threads)]
    counter = Counter(len(cells) + len(benches), "sweep", unit="cell") if progress else None
    done = failed = 0
    spent = {"build": [0, 0.0], "bench": [0, 0.0]}  # kind -> [cells done, seconds]: builds cost far more
    last = time.perf_counter()
    failures: list[dict] = []

    def tick(kind: str, error: dict | None = None):
        nonlocal done, failed, last
        done += 1
        now = time.perf_counter()
        spent[kind][0] += 1
        spent[kind][1] += now - last
        last = now
        if error:
            failed += 1
            failures.append(error)
            log.warning("sweep: %s (%s) failed: %s", error["cell"], error["stage"], error["reason"])
        if counter:
            builds_left = len(cells) - spent["build"][0]
            per_build = spent["build"][1] / max(1, spent["build"][0])
            per_bench = spent["bench"][1] / spent["bench"][0] if spent["bench"][0] else 10.0
            left = builds_left * per_build + (counter.total - done - builds_left) * per_bench
            counter.update(done, failed=failed, seconds_left=round(left))

    keys = {cell: build_key(plan, cell) for cell in cells}
    built, todo = {}, []
    for cell in cells:
        folder, key = cell_folder(out, cell), keys[cell]
        if _same_key(folder / STAMP, key) and (folder / mf.MANIFEST).is_file():
            log.info("sweep: %s unchanged, not rebuilt", cell.name)
            built[cell] = folder
            tick("build")
        else:
            todo.append((cell, key))
    for cell, key, outcome in pool.builds(todo):
        if "error" in outcome:
            tick("build", {"cell": cell.name, "stage": "build", "reason": outcome["error"]})
            continue
        built[cell] = unpack(outcome["files"], cell_folder(out, cell))
        tick("build")

    rows, todo = [], []
    for cell, spec, threads in benches:
        if cell not in built:
            tick("bench")
            continue
        path, key = bench_path(built[cell], spec, threads), bench_key(plan, keys[cell], spec, threads)
        if not retime and _same_key(path, key):
            log.info("sweep: %s on %s (threads: %s) unchanged, not timed again", cell.name, spec, threads or "default")
            rows.append(json.loads(path.read_text())["row"])
            tick("bench")
        else:
            todo.append((cell, spec, threads, key, built[cell]))
    # rounds: every artifact timed once per round, the rounds one after another, so that a slow
    # spell of the machine lands on every artifact; the row's p50/p90 are the medians over rounds
    results: dict[tuple, list[dict]] = {}
    for rnd in range(plan.rounds):
        this = [t for t in todo if rnd == 0 or not t[1].startswith("pi-emu")]  # emulated: once
        for item, outcome in pool.benches(this):
            results.setdefault(item, []).append(outcome)
            if rnd < plan.rounds - 1 and not item[1].startswith("pi-emu"):
                continue
            cell, spec, threads, key, folder = item
            done_ = results[item]
            bad = next((o for o in done_ if "error" in o or "skip" in o), None)
            if bad is not None and "error" in bad:
                tick("bench", {"cell": cell.name, "stage": f"bench on {spec}", "reason": bad["error"]})
                continue
            if bad is not None:
                skipped.append({"cell": cell.name, "device": spec, "reason": bad["skip"]})
            else:
                row = _over_rounds([o["row"] for o in done_]) | {
                    "artifact": str(folder / Path(done_[0]["row"]["artifact"]).name)}
                mf.write_json_atomic(bench_path(folder, spec, threads),
                                     {"key": key, "row": row, "results": [o["result"] for o in done_]})
                rows.append(row)
            tick("bench")
    if counter:
        counter.close()
    doc = {"schema": SCHEMA, "plan": plan.as_dict(), "rows": [_relative(r, out) for r in rows], "failed": failures,
           "skipped": skipped, "environment": host_environment(), "executor": pool.describe()}
    mf.write_json_atomic(out / "sweep.json", doc)
    return doc


STAMP = "sweep-cell.json"


def _over_rounds(rows: list[dict]) -> dict:
    """One row from a bench's rounds: p50/p90 the medians of the rounds' own, and the rounds' p50s."""
    import statistics

    row = dict(rows[0])
    if len(rows) > 1 and all(r.get("p50_ms") is not None for r in rows):
        row["p50_ms"] = statistics.median(r["p50_ms"] for r in rows)
        row["p90_ms"] = statistics.median(r["p90_ms"] for r in rows)
    row["rounds"] = len(rows)
    row["p50_rounds_ms"] = [r.get("p50_ms") for r in rows]
    row["under_load"] = any(r.get("under_load") for r in rows)
    row["busy_before"] = max((r["busy_before"] for r in rows if r.get("busy_before") is not None), default=None)
    return row


def cell_folder(out: Path, cell: Cell) -> Path:
    return out / "cells" / _model_name(cell.model) / cell.precision / cell.target


def bench_path(folder: Path, spec: str, threads: int | None) -> Path:
    safe = spec.replace("://", "-").replace("/", "-").replace(":", "-").replace("@", "-")
    return folder / f"bench-{safe}-{threads or 'default'}t.json"


def bench_key(plan: Plan, cell_key: str, spec: str, threads: int | None) -> str:
    return hashlib.sha256(json.dumps([cell_key, spec, threads, plan.runs, plan.warmup, plan.rounds]).encode()).hexdigest()


def _same_key(stamp: Path, key: str) -> bool:
    try:
        return json.loads(stamp.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


# ---- the work of one cell, wherever it runs (this process, or a Ray worker on another node) ----

def build_task(plan: Plan, cell: Cell, key: str) -> dict:
    """Build one cell in a scratch folder; {"files": tar bytes of its target folder, with the
    stamp} or {"error": the one-line reason}."""
    import tempfile

    from edge.config import BuildConfig
    from edge.pipeline import build

    try:
        with tempfile.TemporaryDirectory(prefix="edge-sweep-") as tmp:
            t0 = time.perf_counter()
            build(BuildConfig(model=cell.model, targets=(cell.target,), out=tmp,
                              **_build_options(plan, cell.precision, cell.model)))
            folder = Path(tmp) / cell.target
            mf.write_json_atomic(folder / STAMP, {"key": key, "cell": cell.name, "node": os.uname().nodename,
                                                  "seconds": round(time.perf_counter() - t0, 1)})
            return {"files": pack(folder)}
    except EdgeError as e:
        return {"error": str(e)}


def bench_task(plan: Plan, cell: Cell, spec: str, threads: int | None, folder: Path | None = None,
               files: bytes | None = None) -> dict:
    """Time one built cell on one device: {"row", "result"}, {"skip": why} or {"error": reason}.
    The cell's files are a folder here, or the tar bytes a Ray task was given."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edge-sweep-bench-") as tmp:
        if files is not None:
            folder = unpack(files, Path(tmp) / "cell")
        try:
            device = None
            if spec != "host":
                from edge.device.remote import parse

                device = parse(spec)
            return _bench(cell, folder / mf.MANIFEST, spec, device, threads, plan)
        except EdgeError as e:
            return {"error": str(e)}


def pack(folder: Path) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    return buf.getvalue()


def unpack(data: bytes, folder: Path) -> Path:
    """A cell's files into `folder`, replacing what was there in one rename (never half a cell)."""
    import io
    import shutil
    import tarfile
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(staging, filter="data")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _bench(cell: Cell, manifest: Path, spec: str, device, threads: int | None, plan: Plan) -> dict:
    from edge.benchmark import bench

    m = mf.read(manifest)
    artifact = manifest.parent / m["artifact"]
    if device is not None:
        try:
            device.check(artifact)
        except UserError as e:
            return {"skip": str(e)}
    busy = _busy_share() if device is None or device.emulated else None
    load = list(os.getloadavg())
    emulated = device is not None and device.emulated
    runs, warmup = (1, 0) if emulated else (plan.runs, plan.warmup)
    r = bench([str(artifact)], threads=threads, runs=runs, warmup=warmup, progress=False, device=device)[0]
    row = _row(cell, m, r, spec, threads, artifact) | {"load_average": load, "busy_before": busy,
                                                        "under_load": busy is not None and busy > BUSY,
                                                        "node": os.uname().nodename}
    return {"row": row, "result": r}


def _busy_share(seconds: float = 1.0) -> float | None:
    """The share of the CPUs busy (all processes, this one idle) over `seconds`, from /proc/stat."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1 - (i1 - i0) / max(1, t1 - t0), 3)


def _row(cell: Cell, m: dict, r: dict, device: str, threads: int | None, artifact: Path) -> dict:
    p = m.get("parity") or {}
    lat = r.get("latency_ms") or {}
    emulated = bool((r.get("device") or {}).get("emulated"))
    return {"cell": cell.name, "model": m.get("model"), "target": m["target"], "precision": m["precision"],
            "stages": [s["stage"] for s in m.get("stages", [])], "artifact": str(artifact),
            "size_mb": round(m["size_bytes"] / 1e6, 3), "device": device, "threads": threads,
            "p50_ms": None if emulated else lat.get("p50"), "p90_ms": None if emulated else lat.get("p90"),
            "emulated": emulated, "top1": p.get("top1"), "fp32_top1": p.get("reference_top1"),
            "drop_pp": p.get("top1_drop_pp"), "agreement": p.get("top1_agreement"),
            "parity_passed": bool(p.get("passed")), "budget": p.get("budget", {}),
            # on an emulated or remote device: its output against this host's on the same input
            "device_parity": {k: (r.get("parity_vs_host") or {}).get(k) for k in ("passed", "min_cosine", "max_abs_diff")}
            if r.get("parity_vs_host") else None}


def _relative(row: dict, out: Path) -> dict:
    try:
        return row | {"artifact": str(Path(row["artifact"]).resolve().relative_to(out.resolve()))}
    except ValueError:
        return row
