"""One layer at a time, as fp32 and int8 .pte programs (XNNPACK delegate), timed in one process at
1 thread, the two interleaved run by run: how much int8 gains per kind of layer in this executorch
build on this CPU. Shapes from EfficientNet-Lite0 and ResNet18: depthwise 3x3 and 5x5 (+ ReLU6),
1x1 expansions (+ ReLU6), 1x1 projections (no activation) and a dense 3x3 (+ ReLU). Why Lite0's
int8 .pte gains less over its fp32 than ResNet18's does.

    python benchmarks/executorch_kernels.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save  # noqa: E402

RUNS = 300
WARMUP = 20

# (name, in channels, out channels, kernel, groups, spatial size, activation)
LAYERS = [
    ("depthwise 3x3 + ReLU6", 480, 480, 3, 480, 14, "relu6"),
    ("depthwise 5x5 + ReLU6", 480, 480, 5, 480, 14, "relu6"),
    ("depthwise 3x3 + ReLU6", 96, 96, 3, 96, 112, "relu6"),
    ("1x1 expand + ReLU6", 16, 96, 1, 1, 112, "relu6"),
    ("1x1 expand + ReLU6", 40, 240, 1, 1, 28, "relu6"),
    ("1x1 project", 240, 40, 1, 1, 28, None),
    ("1x1 project", 480, 80, 1, 1, 14, None),
    ("dense 3x3 + ReLU", 64, 64, 3, 1, 56, "relu"),
]


def main() -> None:
    import numpy as np
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from edge.quantize.pt2e_xnnpack import Pt2eXnnpack
    from edge.targets.executorch import lower

    portable_lib._unsafe_reset_threadpool(1)  # before any program is loaded
    nn = torch.nn
    rows, keep = [], []
    rng = np.random.default_rng(0)
    for name, cin, cout, k, groups, size, act in LAYERS:
        layers = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)]
        layers += [nn.ReLU6()] if act == "relu6" else [nn.ReLU()] if act == "relu" else []
        m = nn.Sequential(*layers).eval()
        ex = (torch.randn(1, cin, size, size),)
        q = Pt2eXnnpack()
        fp32, _ = lower(torch.export.export(m, ex))
        p = q.prepare(m, ex)
        q.calibrate(p, rng.standard_normal((32, cin, size, size)).astype(np.float32))
        int8, _ = lower(q.convert(p, ex)[0])
        meths = []
        for data in (fp32, int8):
            prog = Runtime.get().load_program(data)
            keep.append(prog)  # a Method needs its Program alive
            meths.append(prog.load_method("forward"))
            for _ in range(WARMUP):
                meths[-1].execute(list(ex))
        ts = np.zeros((2, RUNS))
        for i in range(RUNS):
            for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                t = time.perf_counter()
                meths[j].execute(list(ex))
                ts[j, i] = time.perf_counter() - t
        ratio = ts[1] / ts[0]
        rows.append({"layer": name, "shape": f"{cin}->{cout} @ {size}x{size}",
                     "macs_m": round(cout * (cin // groups) * k * k * size * size / 1e6, 1),
                     "fp32_p50_ms": round(float(np.median(ts[0])) * 1e3, 4),
                     "int8_p50_ms": round(float(np.median(ts[1])) * 1e3, 4),
                     "int8_vs_fp32": round(float(np.median(ratio)), 3)})
        print(rows[-1], flush=True)
    env = environment(threads=1)
    md = ["# One layer as a .pte, fp32 vs int8 (XNNPACK delegate, 1 thread)", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; executorch {env['versions'].get('executorch')}. {RUNS} runs of each "
          "program, fp32 and int8 interleaved; int8 / fp32 is the median of the per-run ratios.", "",
          "| layer | channels @ size | MMACs | fp32 ms | int8 ms | int8 / fp32 |", "|---|---|---|---|---|---|"]
    md += [f"| {r['layer']} | {r['shape']} | {r['macs_m']} | {r['fp32_p50_ms']} | {r['int8_p50_ms']} | "
           f"{r['int8_vs_fp32']}x |" for r in rows]
    save("executorch_kernels", {"rows": rows, "runs": RUNS, "warmup": WARMUP, "threads": 1, "environment": env},
         "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
