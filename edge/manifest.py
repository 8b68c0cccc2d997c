"""The manifest.json written beside every artifact: what went in, which tool versions, what came
out, hashes, sizes and parity figures; and the folder it lives in.

Every build publishes one folder per target, OUT/<target>/, holding the artifact, its manifest,
its check samples (`check.npz`: inputs and the reference's outputs, what `edge verify` re-runs)
and, for a classifier, its labels. The folder is assembled in a staging folder and swapped into
place whole, so a manifest on disk always describes a finished, verified artifact, and a failure
at any point leaves the previous folder or none. A manifest names its files by plain names inside
its own folder; readers refuse anything else."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("edge")
MANIFEST = "manifest.json"
SCHEMA = "edge-manifest"
SCHEMA_VERSION = 2
CHECK_FILE = "check.npz"
LABELS_FILE = "labels.txt"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def all_versions() -> dict[str, str | None]:
    """Versions of every tool a build may use, read without importing the heavy ones."""
    from edge.targets import TARGETS
    from edge.targets.base import pkg_version

    v = {"edge": pkg_version("edge"), "python": platform.python_version(), "numpy": pkg_version("numpy"),
         "torch": pkg_version("torch"), "torchvision": pkg_version("torchvision")}
    for t in TARGETS:
        v.update(t.versions())
    return v


def machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": _cpu_model(),
            "cpu_count": os.cpu_count()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process's umask: what open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via a temporary file in the same folder, then rename; mode as the umask says."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read(path: Path) -> dict:
    from edge.errors import UserError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read manifest {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not an edge manifest (not a JSON object)")
    return data


def is_edge_manifest(data) -> bool:
    """Written by edge: schema 2 says so; schema-1 manifests are recognised by their fields."""
    if not isinstance(data, dict):
        return False
    if data.get("schema") == SCHEMA:
        return True
    return isinstance(data.get("schema_version"), int) and all(
        k in data for k in ("artifact", "target", "sha256", "build"))


def find(out_dir: Path) -> list[Path]:
    """Every manifest in a build folder: OUT/<target>/manifest.json, and OUT/manifest.json (where
    builds before per-target folders put it) unless another tool wrote that one: a build into a
    folder that holds, say, a web app's manifest.json leaves it there, and it is skipped with a
    line that says so."""
    out_dir = Path(out_dir)
    found = sorted(p for p in out_dir.glob(f"*/{MANIFEST}") if p.is_file())
    top = out_dir / MANIFEST
    if top.is_file() and foreign(top):
        log.warning("skipped %s: not an edge manifest", top)
    elif top.is_file():
        found.insert(0, top)
    return found


def foreign(path: Path) -> bool:
    """A manifest.json that another tool wrote: a JSON object that is not an edge manifest. (One
    that cannot be read is not foreign: readers say what is wrong with it.)"""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and not is_edge_manifest(data)


def member(folder: Path, name, what: str) -> Path:
    """A file a manifest names: a plain file name inside the manifest's folder, not a symlink that
    leaves it. Anything else is a UserError (exit 2): a build folder must not point elsewhere."""
    from edge.errors import UserError

    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"{folder / MANIFEST}: its {what} {name!r} is not a plain file name in that folder; "
                        "an edge manifest names files beside it")
    path = folder / name
    try:
        real, base = path.resolve(strict=False), folder.resolve()
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    if real.parent != base:
        raise UserError(f"{path} is a link that leaves {folder}; an edge manifest names files inside its folder")
    return path


def check_inputs(m: dict, path: Path) -> None:
    """UserError when a manifest claims an input too large to make samples for (edge.tensors.
    check_size): a reader would exhaust memory before anything could say why."""
    from edge.tensors import check_size

    specs = [*(m.get("inputs") if isinstance(m.get("inputs"), list) else []), m.get("input")]
    for spec in (s for s in specs if isinstance(s, dict)):
        for key in ("shape", "model_shape"):
            shape = spec.get(key)
            if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
                check_size(shape, f"{path}: input {spec.get('name', '')!r} of shape")


def replaceable(dest: Path) -> None:
    """UserError unless `dest` is absent, empty, or an edge build folder holding only files its
    manifest names (so replacing it loses nothing edge did not write)."""
    from edge.errors import UserError

    if not dest.exists():
        return
    if not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder; pass another --out")
    files = {p.name for p in dest.iterdir()}
    if not files:
        return
    m_path = dest / MANIFEST
    if not m_path.is_file():
        raise UserError(f"{dest} holds files edge did not write ({', '.join(sorted(files)[:3])}); move them or "
                        "pass another --out")
    try:
        data = json.loads(m_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not is_edge_manifest(data):
        raise UserError(f"{m_path} was not written by edge; edge will not replace it: move it or pass another --out")
    own = {MANIFEST, data.get("artifact"), (data.get("check") or {}).get("file"), data.get("labels"),
           *(data.get("extra_files") or [])} | {"explain.png"}
    foreign = sorted(f for f in files - own if not f.startswith(".edge-"))
    if foreign:
        raise UserError(f"{dest} holds files edge did not write ({', '.join(foreign[:3])}); move them or pass "
                        "another --out")


def publish_folder(staged: Path, dest: Path) -> None:
    """Swap a fully written staging folder into place as `dest`: the old folder (if any) is moved
    aside, the new one renamed in, the old one removed. A failure leaves the old folder or none."""
    replaceable(dest)
    mode = umask_mode(0o777)
    for p in [staged, *staged.rglob("*")]:
        os.chmod(p, mode if p.is_dir() else umask_mode())
    old = None
    if dest.exists():
        old = dest.with_name(f".edge-old-{os.getpid()}-{dest.name}")
        os.rename(dest, old)
    try:
        os.rename(staged, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_check(path: Path, inputs: dict, reference: dict) -> None:
    """The check samples: every input's samples and the reference's outputs on them."""
    import numpy as np

    np.savez_compressed(path, **{f"input:{k}": v for k, v in inputs.items()},
                        **{f"reference:{k}": v for k, v in reference.items()})


def read_check(path: Path) -> tuple[dict, dict]:
    """(inputs, reference outputs) by name from a check file (plain arrays only, no pickles)."""
    import numpy as np

    from edge.errors import UserError

    try:
        data = np.load(path, allow_pickle=False)
        inputs = {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}
        ref = {k.removeprefix("reference:"): data[k] for k in data.files if k.startswith("reference:")}
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise UserError(f"cannot read check samples {path}: {e}") from None
    if not inputs or not ref:
        raise UserError(f"{path} holds no check samples")
    return inputs, ref
