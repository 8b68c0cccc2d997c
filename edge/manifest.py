"""The manifest.json written beside every artifact: what went in, which tool versions, what came
out, hashes, sizes and parity figures. Written atomically, after the artifact, so a manifest
on disk always describes a finished, verified artifact."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


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


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read(path: Path) -> dict:
    from edge.errors import UserError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read manifest {path}: {e}") from None


def find(out_dir: Path) -> list[Path]:
    """Every manifest in a build folder: OUT/manifest.json and OUT/<target>/manifest.json."""
    out_dir = Path(out_dir)
    return sorted(p for p in [out_dir / MANIFEST, *out_dir.glob(f"*/{MANIFEST}")] if p.is_file())
