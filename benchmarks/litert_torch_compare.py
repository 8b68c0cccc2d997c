"""edge's TFLite artifacts against Google's own PyTorch-to-TFLite converter, litert-torch, on the
same networks with the same weights: MobileNetV2, ResNet18 and EfficientNet-Lite0, fp32 and int8.
Per artifact, the ops the converter wrote (by type), XNNPACK's partitions and the ops left outside
them; then p50 at 1 thread of edge's TFLite, litert-torch's TFLite and edge's ONNX, all timed in
one process, interleaved run by run, each ratio paired against the machine's drift.

litert-torch runs in its own venv (`make venv-litert-torch`: .venv-litert-torch, from
requirements-litert-torch.txt), because it pins typing_extensions 4.12 and pulls in jax and
transformers; `benchmarks/litert_torch_convert.py` converts there, loading the network each edge
build was checked against (edge.verification.reference_model: the registry's network with the
build's weights). int8 is litert-torch's documented PT2E recipe (its PT2EQuantizer, symmetric
per-channel weights, static activations) calibrated on the same built-in photos edge calibrates on.

The edge builds are benchmarks/tflite_vs_onnx.py's (same folders), built here where missing.

    python benchmarks/litert_torch_compare.py [--runs 300] [--work DIR] [--build-only]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, interleaved_times, paired_times, save  # noqa: E402
from tflite_vs_onnx import MODELS, WARMUP, build_one, runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv-litert-torch" / "bin" / "python"


def convert(model: str, precision: str, edge_tflite: Path, out: Path) -> Path:
    """litert-torch's .tflite of the network edge's build was checked against (reused when there)."""
    import numpy as np

    from edge.models import MODELS as REG
    from edge.quantize.calibration import builtin_sets

    path = out / f"{model}.{precision}.tflite"
    if path.is_file():
        return path
    if not VENV_PY.is_file():
        raise SystemExit(f"{VENV_PY} is missing: run `make venv-litert-torch` first")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(VENV_PY), str(Path(__file__).parent / "litert_torch_convert.py"),
           "--manifest", str(edge_tflite.parent / "manifest.json"), "--precision", precision, "--out", str(path)]
    if precision == "int8":
        cal = builtin_sets(REG.get(model))[0]
        np.save(out / "calibration.npy", next(iter(cal.arrays.values())))
        cmd += ["--calib", str(out / "calibration.npy")]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return path


def graph(path: Path) -> dict:
    """The converter's ops by type, and XNNPACK's partitions of them (edge's own reading)."""
    from edge.targets.tflite import interpreter, xnnpack_partitions

    ops = interpreter(path, threads=1)._get_ops_details()
    return {"ops_by_type": dict(Counter(o["op_name"] for o in ops if o["op_name"] != "DELEGATE").most_common()),
            "delegation": xnnpack_partitions(ops), "size_bytes": path.stat().st_size}


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "sweeps" / "tflite-vs-onnx")
    ap.add_argument("--build-only", action="store_true", help="build and convert, then stop")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    arts: dict[str, Path] = {}
    for model in MODELS:
        for precision in ("fp32", "int8"):
            d = a.work / model / precision
            arts[f"{model} {precision} edge tflite"] = build_one(model, "tflite", precision, d)
            arts[f"{model} {precision} edge onnx"] = build_one(model, "onnx", precision, d)
            arts[f"{model} {precision} litert-torch"] = convert(model, precision, arts[f"{model} {precision} edge tflite"],
                                                                d / "litert-torch")
    if a.build_only:
        return
    graphs = {n: graph(p) for n, p in arts.items() if p.suffix == ".tflite"}
    times, p50 = interleaved_times({n: runner(p) for n, p in arts.items()}, a.runs, WARMUP)
    ratios = {}
    for model in MODELS:
        for precision in ("fp32", "int8"):
            k = f"{model} {precision}"
            ratios[f"{k}: litert-torch / edge tflite"] = paired_times(times[f"{k} edge tflite"], times[f"{k} litert-torch"])
            ratios[f"{k}: edge tflite / edge onnx"] = paired_times(times[f"{k} edge onnx"], times[f"{k} edge tflite"])
    env = environment(threads=1)
    v = env["versions"]
    md = ["# edge's TFLite against litert-torch's conversion of the same network (`benchmarks/litert_torch_compare.py`)",
          "", f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}; {v.get('tflite_interpreter')}, onnxruntime "
          f"{v.get('onnxruntime')}, litert-torch {_litert_torch_version()}. 1 thread, every artifact in one process, "
          f"{a.runs} runs each after {WARMUP} warm-up, interleaved run by run. MobileNetV2 and ResNet18 have random "
          "weights (batch norm re-estimated; they time like trained ones), Lite0 its ImageNet weights; both converters "
          "start from the same network and weights.", "",
          "| model | precision | artifact | size MB | ops | XNNPACK partitions | ops outside | p50 ms |",
          "|---|---|---|---|---|---|---|---|"]
    for n, p in arts.items():
        model, precision, *rest = n.split()
        g = graphs.get(n)
        if g is None:
            md.append(f"| {model} | {precision} | {' '.join(rest)} | {p.stat().st_size / 1e6:.2f} | - | - | - | {p50[n]} |")
            continue
        d = g["delegation"]
        outside = ", ".join(f"{op} x{c}" for op, c in d["outside"].items()) or "none"
        md.append(f"| {model} | {precision} | {' '.join(rest)} | {g['size_bytes'] / 1e6:.2f} | {d['ops']} | "
                  f"{d['partitions']} | {outside} | {p50[n]} |")
    md += ["", "Paired ratios (median of per-run ratios, 95% bootstrap interval, Wilcoxon p):", "",
           "| comparison | ratio | 95% CI | Wilcoxon p |", "|---|---|---|---|"]
    md += [f"| {k} | {r['ratio']}x | {r['ci95'][0]}..{r['ci95'][1]} | {r['wilcoxon_p']:.2g} |" for k, r in ratios.items()]
    md += ["", "Op types each converter wrote:", ""]
    for model in MODELS:
        for precision in ("fp32", "int8"):
            for who in ("edge tflite", "litert-torch"):
                g = graphs[f"{model} {precision} {who}"]
                md.append(f"- {model} {precision} {who}: " + ", ".join(f"{op} {c}" for op, c in g["ops_by_type"].items()))
    save("litert_torch_compare", {"p50_ms": p50, "ratios": ratios, "graphs": graphs, "runs": a.runs,
                                  "artifacts": {n: str(p.relative_to(ROOT)) for n, p in arts.items()},
                                  "environment": env}, "\n".join(md) + "\n")


def _litert_torch_version() -> str | None:
    try:
        return subprocess.run([str(VENV_PY), "-c", "import importlib.metadata as m; print(m.version('litert-torch'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
