"""One depthwise convolution + ReLU6 (480 channels, 14x14, the shape of EfficientNet-Lite0's
middle stages), 3x3 and 5x5, as fp32 and int8 .pte programs (XNNPACK delegate), timed in one process
at 1 thread: why Lite0's int8 .pte is barely faster than its fp32 on this CPU.

    python benchmarks/executorch_depthwise.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save  # noqa: E402

RUNS = 200


def main() -> None:
    import numpy as np
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from edge.quantize.pt2e_xnnpack import Pt2eXnnpack
    from edge.targets.executorch import lower

    portable_lib._unsafe_reset_threadpool(1)  # before any program is loaded
    rows, keep = [], []
    for k in (3, 5):
        c = 480
        m = torch.nn.Sequential(torch.nn.Conv2d(c, c, k, padding=k // 2, groups=c), torch.nn.ReLU6()).eval()
        ex = (torch.randn(1, c, 14, 14),)
        q = Pt2eXnnpack()
        fp32, _ = lower(torch.export.export(m, ex))
        p = q.prepare(m, ex)
        q.calibrate(p, np.random.default_rng(0).standard_normal((32, c, 14, 14)).astype(np.float32))
        int8, _ = lower(q.convert(p, ex)[0])
        row = {"kernel": k, "channels": c, "size": 14}
        for name, data in (("fp32", fp32), ("int8", int8)):
            prog = Runtime.get().load_program(data)
            keep.append(prog)  # a Method needs its Program alive
            meth = prog.load_method("forward")
            for _ in range(20):
                meth.execute(list(ex))
            ts = []
            for _ in range(RUNS):
                t = time.perf_counter()
                meth.execute(list(ex))
                ts.append(time.perf_counter() - t)
            row[f"{name}_p50_ms"] = round(float(np.median(ts)) * 1e3, 4)
        row["int8_vs_fp32"] = round(row["int8_p50_ms"] / row["fp32_p50_ms"], 3)
        rows.append(row)
    md = ["# Depthwise conv + ReLU6 as a .pte, fp32 vs int8 (1 thread, p50 of 200 runs)", "",
          "| kernel | channels x size | fp32 ms | int8 ms | int8 / fp32 |", "|---|---|---|---|---|"]
    md += [f"| {r['kernel']}x{r['kernel']} | {r['channels']} x {r['size']}x{r['size']} | {r['fp32_p50_ms']} | "
           f"{r['int8_p50_ms']} | {r['int8_vs_fp32']}x |" for r in rows]
    save("executorch_depthwise", {"rows": rows, "runs": RUNS, "threads": 1, "environment": environment(threads=1)},
         "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
