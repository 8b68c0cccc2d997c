"""Build time: `edge build --model efficientnet_lite0 --target tflite --int8` against plain
`onnx2tf -oiqt` on the same ONNX file and the same calibration samples, side by side in one
run, alternating, as a ratio. Ours includes loading the model, calibration, and the parity
check in the TFLite interpreter; onnx2tf's writes its seven default variants.

    python benchmarks/build_time_tflite.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, environment, save, unlabelled_calibration_dir  # noqa: E402

BIN = Path(sys.executable).parent


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """The ONNX file edge exports, and the calibration samples both tools get (NCHW for edge's
    .npy path, NHWC for onnx2tf's -cind)."""
    import torch

    from edge.data import list_images, load_images
    from edge.models import MODELS, load_model
    from edge.targets.onnx import _simplify
    from edge.targets.tflite import ONNX2TF_SAMPLE

    spec = MODELS.get("efficientnet_lite0")
    model = load_model(spec, "imagenet")
    onnx_path = work / "efficientnet_lite0.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(onnx_path), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17)
    _simplify(onnx_path)  # the graph edge itself hands to onnx2tf (the raw export makes it fail)
    if IMAGENET_SAMPLE.exists():
        files = list_images(unlabelled_calibration_dir(work / "calib"))[:100]
    else:
        from edge.data import BUILTIN_CALIB_DIR
        files = list_images(BUILTIN_CALIB_DIR)
    x = load_images(files, spec.preprocess)
    np.save(work / "calib_nchw.npy", x)
    np.save(work / "calib_nhwc.npy", x.transpose(0, 2, 3, 1))
    # onnx2tf's test inference reads this file from its working folder instead of downloading it.
    sample = np.resize(x.transpose(0, 2, 3, 1), (20, 224, 224, 3))[:, ::2, ::2][:, :128, :128]
    np.save(work / ONNX2TF_SAMPLE, ((sample - sample.min()) / (sample.max() - sample.min())).astype(np.float32))
    return onnx_path, work / "calib_nchw.npy", work / "calib_nhwc.npy"


def time_cmd(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    onnx_path, calib_nchw, calib_nhwc = prepare(work)
    ours_cmd = [str(BIN / "edge"), "--quiet", "build", "--model", "efficientnet_lite0", "--target", "tflite",
                "--int8", "--calib", str(calib_nchw), "--out", str(work / "edge_out")]
    theirs_cmd = [str(BIN / "onnx2tf"), "-i", str(onnx_path), "-o", str(work / "onnx2tf_out"), "-oiqt",
                  "-cind", "input", str(calib_nhwc), "[[[[0.,0.,0.]]]]", "[[[[1.,1.,1.]]]]", "-n"]
    ours, theirs = [], []
    for i in range(args.repeats):  # alternate, so drifting machine load hits both alike
        for name, cmd, acc, out in (("edge", ours_cmd, ours, "edge_out"), ("onnx2tf", theirs_cmd, theirs, "onnx2tf_out")):
            shutil.rmtree(work / out, ignore_errors=True)
            acc.append(time_cmd(cmd, work))
            print(f"run {i + 1} {name}: {acc[-1]:.1f} s", flush=True)
    variants = sorted(p.name for p in (work / "onnx2tf_out").glob("*.tflite"))
    ours_files = sorted(str(p.relative_to(work / "edge_out")) for p in (work / "edge_out").rglob("*") if p.is_file())
    ratio = statistics.median(ours) / statistics.median(theirs)
    data = {"environment": environment(), "edge_seconds": ours, "onnx2tf_seconds": theirs,
            "ratio_edge_over_onnx2tf": ratio, "bar": "ratio <= 1.0", "passed": ratio <= 1.0,
            "onnx2tf_outputs": variants, "edge_outputs": ours_files, "calibration_samples": int(np.load(calib_nchw).shape[0]),
            "edge_command": " ".join(ours_cmd[1:]), "onnx2tf_command": " ".join(theirs_cmd[1:])}
    env = data["environment"]
    md = (f"# Build time: EfficientNet-Lite0 -> TFLite int8\n\n"
          f"{env['date']}, {env['machine']['processor']}, {env['machine']['cpu_count']} cores, "
          f"edge {env['git_commit']}, onnx2tf {env['versions'].get('onnx2tf')}, "
          f"tensorflow {env['versions'].get('tensorflow')}; {args.repeats} alternating runs each, "
          f"{data['calibration_samples']} calibration images given to both (edge holds every 10th out "
          f"for its parity check).\n\n"
          f"| tool | median s | runs (s) | files written |\n|---|---|---|---|\n"
          f"| edge build --target tflite --int8 (incl. parity check) | {statistics.median(ours):.1f} | "
          f"{', '.join(f'{t:.1f}' for t in ours)} | {len(ours_files)} ({', '.join(ours_files)}) |\n"
          f"| onnx2tf -oiqt | {statistics.median(theirs):.1f} | {', '.join(f'{t:.1f}' for t in theirs)} | "
          f"{len(variants)} .tflite ({', '.join(variants)}) + saved_model |\n\n"
          f"**Ratio edge / onnx2tf: {ratio:.2f}x** (bar: at most 1.0x) -> {'PASS' if ratio <= 1.0 else 'FAIL'}\n")
    save("build_time_tflite", data, md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
