"""EfficientNet-Lite0 as a .pte (XNNPACK delegate), with and without edge's folding of symmetric
zero pads into the following convolution (quantize/pt2e_xnnpack.py fold_zero_pads): int8 and
fp32, all four programs timed in one process at 1 thread, interleaved run by run (order
alternating), so that each comparison is paired against the machine's drift. Also checks that
the fold leaves the outputs where they were (top-1 agreement and cosine on the 750 labelled photos).

    python benchmarks/executorch_pads.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, lite0_sample, paired_times, save  # noqa: E402

RUNS = 300
WARMUP = 20


def programs(model, cal, example) -> dict[str, bytes]:
    import torch

    from edge.quantize.pt2e_xnnpack import Pt2eXnnpack, fold_zero_pads
    from edge.targets.executorch import lower

    out = {}
    for fold in (False, True):
        tag = "folded" if fold else "explicit"
        q = Pt2eXnnpack()
        p = q.prepare(model, example, fold_pads=fold)
        q.calibrate(p, cal)
        out[f"int8 {tag}"] = lower(q.convert(p, example)[0])[0]
        ep = torch.export.export(model, example)
        if fold:
            graph = ep.module()
            fold_zero_pads(graph)
            ep = torch.export.export(graph, example)
        out[f"fp32 {tag}"] = lower(ep)[0]
    return out


def main() -> None:
    import numpy as np
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(1)  # before any program is loaded
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, cal, x, labels, _ = lite0_sample(Path(tmp))
    example = (torch.from_numpy(cal[:1]),)
    progs = programs(model.eval(), cal, example)
    names = list(progs)
    keep = {n: Runtime.get().load_program(progs[n]) for n in names}  # a Method needs its Program alive
    meths = {n: keep[n].load_method("forward") for n in names}

    outputs = {n: np.concatenate([meths[n].execute([torch.from_numpy(x[i:i + 1])])[0].numpy() for i in range(len(x))])
               for n in names}
    agree = {}
    for prec in ("int8", "fp32"):
        a, b = outputs[f"{prec} explicit"], outputs[f"{prec} folded"]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        agree[prec] = {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()), "min_cosine": float(cos.min()),
                       "top1_explicit": 100 * float((a.argmax(1) == labels).mean()),
                       "top1_folded": 100 * float((b.argmax(1) == labels).mean())}

    feed = [example[0]]
    for n in names:
        for _ in range(WARMUP):
            meths[n].execute(feed)
    times = {n: np.zeros(RUNS) for n in names}
    for i in range(RUNS):
        for n in (names if i % 2 == 0 else names[::-1]):
            s = time.perf_counter()
            meths[n].execute(feed)
            times[n][i] = time.perf_counter() - s
    p50 = {n: round(1e3 * float(np.median(times[n])), 3) for n in names}
    tests = {
        "int8 folded / int8 explicit": paired_times(times["int8 explicit"], times["int8 folded"]),
        "fp32 folded / fp32 explicit": paired_times(times["fp32 explicit"], times["fp32 folded"]),
        "int8 explicit / fp32 explicit": paired_times(times["fp32 explicit"], times["int8 explicit"]),
        "int8 folded / fp32 folded": paired_times(times["fp32 folded"], times["int8 folded"]),
    }
    env = environment(threads=1)
    md = ["# EfficientNet-Lite0 .pte: symmetric zero pads explicit vs folded into the convolution", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start {env['load_average_at_start']}; "
          f"1 thread, the four programs in one process, {RUNS} runs each interleaved (after {WARMUP} warm-up). "
          "Calibration: the 250 unlabelled photos of the ImageNet sample. Ratios: median of the per-run ratios, "
          "95% bootstrap interval, Wilcoxon signed-rank p.", "",
          "| program | size MB | p50 ms |", "|---|---|---|"]
    md += [f"| {n} | {len(progs[n]) / 1e6:.2f} | {p50[n]} |" for n in names]
    md += ["", "| comparison | ratio (95% CI) | Wilcoxon p |", "|---|---|---|"]
    md += [f"| {k} | {v['ratio']}x ({v['ci95'][0]}..{v['ci95'][1]}) | {v['wilcoxon_p']:.2g} |" for k, v in tests.items()]
    md += ["", "Outputs on the 750 labelled photos (folded vs explicit, same precision):", "",
           "| precision | top-1 agreement | min cosine | top-1 explicit % | top-1 folded % |", "|---|---|---|---|---|"]
    md += [f"| {k} | {v['top1_agreement']:.4f} | {v['min_cosine']:.5f} | {v['top1_explicit']:.2f} | "
           f"{v['top1_folded']:.2f} |" for k, v in agree.items()]
    save("executorch_pads", {"p50_ms": p50, "sizes": {n: len(progs[n]) for n in names}, "paired": tests,
                             "outputs": agree, "runs": RUNS, "warmup": WARMUP,
                             "seconds": round(time.perf_counter() - t0, 1), "environment": env}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
