"""EfficientNet-Lite0 int8 on every target, on ../shared/data/imagenette: calibrated on the first
N photos of train/ (by file name), evaluated on the 4,000 photos of eval/ (1000-way top-1), every
artifact run in its own runtime. It saves each artifact's top-1 class per photo, so that two runs
(two commits, two recipes) can be compared photo by photo with a paired test:

    python benchmarks/lite0_imagenette.py --tag after                  # this checkout
    python benchmarks/lite0_imagenette.py --compare before after       # McNemar + bootstrap CI
    python benchmarks/lite0_imagenette.py --targets executorch --tag executorch   # one target

It works with edge's build API before and after the "any model" redesign (the run is the same
build; only where the artifacts land and how runners are called differ), so the "before" figures
come from the same script run in a checkout of the older commit."""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, SHARED, environment, save  # noqa: E402

IMAGENETTE = SHARED / "imagenette"
TARGETS = ("torchscript-mobile", "onnx", "tflite")


def calibration_dir(dest: Path, n: int) -> Path:
    """The first n photos of imagenette/train (by file name), as symlinks."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(IMAGENETTE / "train" / "labels.csv", newline="") as f:
        files = sorted(row["file"] for row in csv.DictReader(f))[:n]
    for name in files:
        (dest / name).symlink_to(IMAGENETTE / "train" / "images" / name)
    return dest


def predictions(m: dict, folder: Path, x):
    """The artifact's top-1 class per photo, run again in its own runtime."""
    import numpy as np

    from edge.targets import TARGETS as REG

    artifact = folder / m["artifact"]
    runner = REG.get(m["target"]).load(artifact, m)
    y = runner.run(x)
    if isinstance(y, dict):
        y = next(iter(y.values()))
    return np.argmax(y, axis=1)


def run(args) -> None:
    import numpy as np

    import edge
    from edge.config import BuildConfig
    from edge.data import load_images, load_labelled
    from edge.models import MODELS
    from edge.pipeline import build

    work = Path(tempfile.mkdtemp(prefix="edge-lite0-imagenette-"))
    calib = calibration_dir(work / "calib", args.calib)
    eval_dir = IMAGENETTE / "eval"
    t0 = time.perf_counter()
    cfg = BuildConfig(model="efficientnet_lite0", targets=tuple(args.targets), precision="int8", weights="imagenet",
                      calib=str(calib), eval=str(eval_dir), out=str(work / "out"),
                      budget={"max_top1_drop": 100.0})  # record every figure, even a miss
    manifests = build(cfg)
    build_s = time.perf_counter() - t0
    ds = load_labelled(eval_dir)
    x = load_images(ds.paths, MODELS.get("efficientnet_lite0").preprocess)
    labels = np.asarray(ds.labels)
    rows, preds = [], {}
    for m in manifests:
        folder = work / "out" / m["target"]
        p = m["parity"]
        top = predictions(m, folder, x)
        preds[m["target"]] = top
        rows.append({"target": m["target"], "fp32_top1": p["reference_top1"], "int8_top1": p["top1"],
                     "drop_pp": round(p["top1_drop_pp"], 3), "rerun_top1": round(100.0 * float((top == labels).mean()), 3),
                     "top1_agreement": p.get("top1_agreement"), "size_bytes": m["size_bytes"]})
    np.savez_compressed(RESULTS / f"lite0_imagenette-{args.tag}.npz", labels=labels, **preds)
    import subprocess

    src = Path(edge.__file__).resolve().parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=src).stdout.strip()
    data = {"benchmark": "lite0_imagenette", "tag": args.tag, "edge_version": edge.__version__,
            "edge_source": str(src), "edge_commit": commit,
            "calibration": f"first {args.calib} photos of imagenette/train", "eval": "imagenette/eval (4,000)",
            "rows": rows, "build_seconds": round(build_s, 1), "environment": environment()}
    md = [f"# EfficientNet-Lite0 int8 on imagenette/eval ({args.tag}, edge {edge.__version__} at {commit})", "",
          f"Calibration: {data['calibration']}. Top-1 over all 1,000 ImageNet classes, each artifact in its runtime.",
          "", "| target | fp32 top-1 | int8 top-1 | drop pp | top-1 agreement |", "|---|---|---|---|---|"]
    md += [f"| {r['target']} | {r['fp32_top1']:.2f} | {r['int8_top1']:.2f} | {r['drop_pp']:.2f} | "
           f"{r['top1_agreement']} |" for r in rows]
    save(f"lite0_imagenette-{args.tag}", data, "\n".join(md) + "\n")


def compare(before: str, after: str) -> None:
    """Paired comparison per target: top-1 difference, its bootstrap 95% CI, McNemar's exact p."""
    import numpy as np
    from scipy.stats import binomtest

    a = np.load(RESULTS / f"lite0_imagenette-{before}.npz")
    b = np.load(RESULTS / f"lite0_imagenette-{after}.npz")
    labels = a["labels"]
    assert np.array_equal(labels, b["labels"]), "the two runs scored different photos"
    rng = np.random.default_rng(0)
    rows = []
    for t in sorted(set(a.files) & set(b.files) - {"labels"}, key=lambda t: (t not in TARGETS, t)):
        ca, cb = a[t] == labels, b[t] == labels
        diff = cb.astype(float) - ca.astype(float)
        boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
        n01, n10 = int((~ca & cb).sum()), int((ca & ~cb).sum())
        p = binomtest(n01, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
        rows.append({"target": t, "before_top1": 100 * ca.mean(), "after_top1": 100 * cb.mean(),
                     "diff_pp": 100 * diff.mean(), "ci95_pp": [100 * np.percentile(boot, 2.5), 100 * np.percentile(boot, 97.5)],
                     "photos_changed": int((a[t] != b[t]).sum()), "mcnemar_p": p,
                     "only_before_right": n10, "only_after_right": n01})
    md = [f"# EfficientNet-Lite0 int8 on imagenette/eval: {before} vs {after}", "",
          "| target | before top-1 | after top-1 | after - before (95% CI) | McNemar p | photos whose top-1 changed |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['target']} | {r['before_top1']:.2f} | {r['after_top1']:.2f} | {r['diff_pp']:+.2f} "
           f"({r['ci95_pp'][0]:+.2f}..{r['ci95_pp'][1]:+.2f}) | {r['mcnemar_p']:.3g} | {r['photos_changed']} |"
           for r in rows]
    save(f"lite0_imagenette-{before}-vs-{after}", {"rows": rows, "environment": environment()}, "\n".join(md) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", default="after", help="name of this run's results")
    ap.add_argument("--calib", type=int, default=500, help="calibration photos from imagenette/train")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), help="targets to build (default: %(default)s)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two saved runs")
    a = ap.parse_args()
    if a.compare:
        compare(*a.compare)
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        run(a)
