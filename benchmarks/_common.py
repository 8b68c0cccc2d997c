"""What every benchmark records beside its numbers: machine, threads, versions, date."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from edge.manifest import all_versions, machine, now

RESULTS = Path(__file__).parent / "results"
SHARED = Path(os.environ.get("EDGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGENET_SAMPLE = SHARED / "imagenet-sample"


def environment(threads: int | None = None) -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"date": now(), "machine": machine(), "threads": threads or os.cpu_count(),
            "load_average_at_start": load, "python": platform.python_version(), "versions": all_versions(),
            "git_commit": commit or None}


def unlabelled_calibration_dir(dest: Path) -> Path:
    """The 250 unlabelled photos of the ImageNet sample (class_index -1), as symlinks in `dest`,
    so calibration never sees an image the accuracy is measured on."""
    import csv

    dest.mkdir(parents=True, exist_ok=True)
    with open(IMAGENET_SAMPLE / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if int(row["class_index"]) < 0:
                (dest / row["file"]).symlink_to(IMAGENET_SAMPLE / "images" / row["file"])
    return dest


def save(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
