"""`edge bench --profile` on the TFLite, ONNX and ExecuTorch artifacts of MobileNetV2, ResNet18 and
EfficientNet-Lite0, fp32 and int8, at 1 thread: does the sum of the per-operator times account for
the measured p50 (the issue's bar: within 15%)? Each artifact in a fresh process, as `edge bench`
runs it: --runs timed runs (unprofiled), then as many under the runtime's profiler (LiteRT's for
TFLite; onnxruntime's; ExecuTorch's ETDump), each alternating with an unprofiled run. The artifacts are
benchmarks/tflite_vs_onnx.py's builds where it has run (same folders and options), else built here.

    python benchmarks/profile_sum.py [--runs 100] [--work DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save  # noqa: E402

from tflite_vs_onnx import MODELS, build_one  # noqa: E402


def main() -> None:
    from edge.benchmark import bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "sweeps" / "tflite-vs-onnx")
    a = ap.parse_args()
    folders = [a.work / m / p / t for m in MODELS for p in ("fp32", "int8") for t in ("tflite", "onnx", "executorch")]
    for f in folders:  # reused when there (benchmarks/tflite_vs_onnx.py's builds), else built
        build_one(f.parent.parent.name, f.name, f.parent.name, f.parent)
    results = bench([str(f) for f in folders], threads=1, runs=a.runs, warmup=10, progress=False, profile=True)
    rows = []
    for f, r in zip(folders, results):
        p = r["profile"]
        top = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in p["by_op_type"][:3])
        rows.append({"artifact": f"{f.parent.parent.name} {f.parent.name} {f.name}", "source": p["source"],
                     "p50_ms": r["latency_ms"]["p50"],
                     "p50_interleaved_ms": p["p50_interleaved_ms"],
                     "sum_ms": p["sum_ms"], "run_ms": p["run_ms"], "sum_vs_p50": p["sum_vs_p50"], "top": top,
                     "nodes": sum(o["nodes"] for o in p["by_op_type"])})
    env = environment(threads=1)
    md = ["# `edge bench --profile`: the operators' times against the measured p50 (`benchmarks/profile_sum.py`)", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}; {env['versions'].get('tflite_interpreter')}, "
          f"onnxruntime {env['versions'].get('onnxruntime')}, "
          f"executorch {env['versions'].get('executorch')}, 1 thread, each artifact in a fresh process: {a.runs} timed "
          f"runs (p50), then {a.runs} profiled runs each "
          "alternating with an unprofiled one (interleaved p50). Operator sum: the median over the profiled runs of "
          "the sum of every node's kernel time (onnxruntime) or of every operator event (LiteRT's profiler and ETDump: "
          "XNNPACK's operators inside the delegate, the interpreter's nodes outside it); profiled run: the median of "
          "the runtime's own span of a run (LiteRT's Invoke, onnxruntime's model_run, ETDump's Method::execute).", "",
          "| artifact | nodes | p50 ms | interleaved p50 ms | operator sum ms | sum / interleaved p50 | profiled run ms | "
          "top op types |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['artifact']} | {r['nodes']} | {r['p50_ms']:.3f} | {r['p50_interleaved_ms']:.3f} | {r['sum_ms']:.3f} | "
           f"{r['sum_vs_p50']:.3f} | {r['run_ms']:.3f} | {r['top']} |" for r in rows]
    save("profile_sum", {"rows": rows, "runs": a.runs, "environment": env,
                         "profiles": [r["profile"] for r in results]}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
