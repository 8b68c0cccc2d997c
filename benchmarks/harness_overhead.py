"""Harness overhead: `edge bench` (edge/device/runner.py in a fresh process) against a bare loop
of each runtime's own call on the same artifact (interpreter.invoke, session.run, module(x)),
also in a fresh process, alternating, 1 thread, in one run. Reported as the ratio of mean
latencies; the bar is at most 1.03.

    python benchmarks/harness_overhead.py [--runs 200] [--repeats 3] [--from BUILD_DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save  # noqa: E402

BARE = r'''
import sys, time, json, numpy as np
path, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
if path.endswith(".tflite"):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1); it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(d["dtype"]))
    call = it.invoke
elif path.endswith(".onnx"):
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    feed = {i.name: rng.standard_normal(i.shape).astype(np.float32)}
    call = lambda: s.run(None, feed)
else:
    import torch
    from torch.jit.mobile import _load_for_lite_interpreter
    torch.set_num_threads(1)
    if sys.argv[5] == "int8":  # as the runner does: int8 weights are packed for the engine active at load
        torch.backends.quantized.engine = "qnnpack"
    m = _load_for_lite_interpreter(path)
    x = torch.from_numpy(rng.standard_normal(json.loads(sys.argv[4])).astype(np.float32))
    torch.set_grad_enabled(False)
    call = lambda: m(x)
for _ in range(warmup):
    call()
t = time.perf_counter()
for _ in range(runs):
    call()
print(json.dumps({"mean_ms": (time.perf_counter() - t) * 1e3 / runs}))
'''


def bare(path: Path, runs: int, warmup: int, shape, precision: str) -> float:
    p = subprocess.run([sys.executable, "-c", BARE, str(path), str(runs), str(warmup), json.dumps(shape), precision],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["mean_ms"]


def harness(path: Path, runs: int, warmup: int) -> float:
    from edge.benchmark import bench

    [r] = bench([str(path)], threads=1, runs=runs, warmup=warmup, progress=False)
    return r["latency_ms"]["mean"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--from", dest="src", help="a `--target all` build folder (default: build fp32 EfficientNet-Lite0)")
    a = ap.parse_args()
    if a.src:
        src = Path(a.src)
    else:
        import edge

        src = Path(tempfile.mkdtemp(prefix="edge-overhead-"))
        edge.build("efficientnet_lite0", "all", precision="fp32", out=str(src))
    rows = []
    for manifest in sorted(src.glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        art = manifest.parent / m["artifact"]
        shape = m["input"]["shape"]
        h, b = [], []
        for _ in range(a.repeats):  # alternate, so machine drift hits both alike
            h.append(harness(art, a.runs, a.warmup))
            b.append(bare(art, a.runs, a.warmup, shape, m["precision"]))
        ratio = statistics.median(h) / statistics.median(b)
        rows.append({"target": m["target"], "precision": m["precision"], "artifact": m["artifact"],
                     "harness_mean_ms": h, "bare_mean_ms": b, "ratio": ratio})
        print(f"{m['target']}: harness {statistics.median(h):.3f} ms, bare {statistics.median(b):.3f} ms, "
              f"ratio {ratio:.3f}", flush=True)
    passed = all(r["ratio"] <= 1.03 for r in rows)
    env = environment(threads=1)
    md = [f"# Harness overhead: edge bench against a bare loop of the runtime's own call\n",
          f"{env['date']}, {env['machine']['processor']}, {env['machine']['cpu_count']} cores, 1 thread, "
          f"edge {env['git_commit']}; {a.repeats} alternating fresh-process runs of {a.runs} timed calls "
          f"(+{a.warmup} warm-up) each; medians of the per-run means.\n",
          "| target | artifact | edge bench mean ms | bare loop mean ms | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['target']} | {r['artifact']} | {statistics.median(r['harness_mean_ms']):.3f} | "
                  f"{statistics.median(r['bare_mean_ms']):.3f} | {r['ratio']:.3f} |")
    md.append(f"\n**Bar: ratio <= 1.03 on every runtime -> {'PASS' if passed else 'FAIL'}**\n")
    save("harness_overhead", {"environment": env, "runs": a.runs, "warmup": a.warmup, "rows": rows,
                              "bar": "ratio <= 1.03", "passed": passed}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
