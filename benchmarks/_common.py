"""What every benchmark records beside its numbers: machine, threads, versions, date."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from edge.manifest import all_versions, machine, now

# EDGE_BENCH_RESULTS moves the output (a smoke run that must not replace the committed figures)
RESULTS = Path(os.environ.get("EDGE_BENCH_RESULTS") or Path(__file__).parent / "results")
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


def paired_times(a, b) -> dict:
    """Per-run times b over a, paired run by run: the median of the per-run ratios, its 95%
    bootstrap interval, Wilcoxon's signed-rank p."""
    import numpy as np
    from scipy.stats import wilcoxon

    r = b / a
    rng = np.random.default_rng(0)
    boot = [np.median(r[rng.integers(0, len(r), len(r))]) for _ in range(2000)]
    return {"ratio": round(float(np.median(r)), 3), "ci95": [round(float(np.percentile(boot, q)), 3) for q in (2.5, 97.5)],
            "wilcoxon_p": float(wilcoxon(a, b).pvalue)}


def interleaved_times(calls: dict, runs: int, warmup: int) -> tuple[dict, dict]:
    """Time every callable `runs` times in one process, interleaved run by run (the order
    alternating), after `warmup` calls each: (name -> seconds per run, name -> p50 ms)."""
    import time

    import numpy as np

    names = list(calls)
    for n in names:
        for _ in range(warmup):
            calls[n]()
    times = {n: np.zeros(runs) for n in names}
    for i in range(runs):
        for n in (names if i % 2 == 0 else names[::-1]):
            s = time.perf_counter()
            calls[n]()
            times[n][i] = time.perf_counter() - s
    return times, {n: round(1e3 * float(np.median(times[n])), 3) for n in names}


def cli_build(out: Path, args: list[str], targets) -> dict:
    """`edge build ARGS --out OUT` on the command line, as a user runs it, timed end to end, its
    command and seconds written to OUT/build.json; a build whose every target has its manifest is
    not built again (build.json read back)."""
    import sys
    import time

    if all((out / t / "manifest.json").is_file() for t in targets):
        return json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    cmd = [str(Path(sys.executable).parent / "edge"), "build", *args, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    info = {"command": " ".join(["edge", *cmd[1:]]), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def class_labels(manifest: dict, labels):
    """Labels in a build's classes: a --finetune build's class map turns ImageNet indices (as
    imagenette's labels.csv gives them) into its own classes; a build that kept the model's classes
    has no map and the labels stand."""
    import numpy as np

    ft = next((s for s in manifest["stages"] if s["stage"] == "finetune"), None)
    if ft is None:
        return np.asarray(labels)
    cmap = {int(k): v for k, v in ft["class_map"].items()}
    return np.array([cmap[int(v)] for v in labels])


def accuracy_table(tests: dict) -> list[str]:
    """Markdown rows of paired accuracy tests ({"b vs a": compress_lite0.mcnemar(a, b, labels)})."""
    return ["Paired accuracy (McNemar's exact test; 95% bootstrap interval of b - a):", "",
            "| b vs a | b - a (pp) | 95% CI | McNemar p | only a right | only b right |", "|---|---|---|---|---|---|"] + [
        f"| {k} | {v['diff_pp']:+.2f} | {v['ci95_pp'][0]:+.2f}..{v['ci95_pp'][1]:+.2f} | {v['mcnemar_p']:.3g} | "
        f"{v['only_a_right']} | {v['only_b_right']} |" for k, v in tests.items()]


def latency_table(speed: dict, runs: int, warmup: int) -> list[str]:
    """Markdown rows of paired latency ratios ({"b vs a": paired_times(a, b)})."""
    return [f"Latency, paired ({runs} interleaved runs after {warmup} warm-up; median of per-run ratios, 95% "
            "bootstrap interval, Wilcoxon p):", "", "| comparison | ratio | 95% CI | Wilcoxon p |", "|---|---|---|---|"] + [
        f"| {k} | {v['ratio']}x | {v['ci95'][0]}..{v['ci95'][1]} | {v['wilcoxon_p']:.2g} |" for k, v in speed.items()]


def save(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def lite0_sample(work: Path, calib: bool = True):
    """EfficientNet-Lite0 with its ImageNet weights on the shared sample: (model, calibration
    stack of the 250 unlabelled photos or None, the 750 labelled photos, their labels, and the
    fp32 logits on them), every stack preprocessed as the model expects."""
    import numpy as np
    import torch

    from edge.data import list_images, load_images, load_labelled
    from edge.models import MODELS, load_model

    spec = MODELS.get("efficientnet_lite0")
    model = load_model(spec, "imagenet", 224)
    cal = load_images(list_images(unlabelled_calibration_dir(work / "calib")), spec.preprocess) if calib else None
    ds = load_labelled(IMAGENET_SAMPLE)
    x, labels = load_images(ds.paths, spec.preprocess), np.asarray(ds.labels)
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(x[i:i + 50])) for i in range(0, len(x), 50)]).numpy()
    return model, cal, x, labels, ref
