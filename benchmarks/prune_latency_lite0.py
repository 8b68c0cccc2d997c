"""Does pruning make the artifact faster? The fine-tuned 10-class EfficientNet-Lite0 against the same
network pruned to at most 60% of its MACs, both int8, same target, one process, one thread,
interleaved run by run; the ratio of p50s with a paired test. Latency depends on the layer shapes,
not on how well the pruned network was trained, so any pruned build of the same recipe serves.

    python benchmarks/prune_latency_lite0.py UNPRUNED_DIR PRUNED_DIR [UNPRUNED_DIR2 PRUNED_DIR2 ...] [--runs 300]

Each DIR is a target folder of an `edge build` (holding manifest.json), e.g.
benchmarks/sweeps/compress-lite0/finetuned-tflite/tflite and .../pruned-0.60-tflite/tflite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, interleaved_times, paired_times, save  # noqa: E402

WARMUP = 20


def describe(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    stages = {s["stage"]: s for s in m["stages"]}
    last = next((stages[s]["after"] for s in ("distill", "prune", "finetune") if s in stages), {})
    before = (stages.get("prune") or {}).get("before") or {}
    path = folder / m["artifact"]
    return {"folder": str(folder), "artifact": m["artifact"], "target": m["target"], "precision": m["precision"],
            "macs": last.get("macs"), "params": last.get("params"), "size_bytes": path.stat().st_size,
            "round_to": (stages.get("prune") or {}).get("round_to"), "path": path, "unpruned": before}


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tflite_vs_onnx import runner

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=300)
    a = ap.parse_args()
    if len(a.pairs) % 2:
        ap.error("give folders in pairs: unpruned, pruned")
    arts = [describe(f) for f in a.pairs]
    for u, p in zip(arts[::2], arts[1::2]):  # an unpruned build without stages: its network's figures from the pruned one's record
        if u["macs"] is None:
            u["macs"], u["params"] = p["unpruned"].get("macs"), p["unpruned"].get("params")
    names = [f"{i // 2}:{'unpruned' if i % 2 == 0 else 'pruned'} {d['target']}" for i, d in enumerate(arts)]
    times, p50 = interleaved_times({n: runner(d["path"]) for n, d in zip(names, arts)}, a.runs, WARMUP)
    tests = {f"{names[i + 1]} vs {names[i]}": paired_times(times[names[i]], times[names[i + 1]])
             for i in range(0, len(names), 2)}
    env = environment(threads=1)
    md = ["# Pruned vs unpruned Lite0, latency (`benchmarks/prune_latency_lite0.py`)", "",
          f"{env['machine']['processor']}, {env['machine']['cpu_count']} cores, 1 thread, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}; {a.runs} interleaved runs after {WARMUP} warm-up "
          "each, one process.", "",
          "| artifact | MACs (M) | params (M) | size MB | p50 ms |", "|---|---|---|---|---|"]
    for n, d in zip(names, arts):
        md.append(f"| {n} ({d['artifact']}) | {(d['macs'] or 0) / 1e6:.1f} | {(d['params'] or 0) / 1e6:.2f} | "
                  f"{d['size_bytes'] / 1e6:.2f} | {p50[n]} |")
    md += ["", "| pruned vs unpruned | p50 ratio (median of per-run ratios) | 95% CI | Wilcoxon p | MACs ratio |",
           "|---|---|---|---|---|"]
    for i, (k, v) in enumerate(tests.items()):
        u, p = arts[2 * i], arts[2 * i + 1]
        md.append(f"| {k} | {v['ratio']}x | {v['ci95'][0]}..{v['ci95'][1]} | {v['wilcoxon_p']:.2g} | "
                  f"{p['macs'] / u['macs']:.2f}x |")
    for d in arts:
        d["path"] = str(d["path"])
    save("prune_latency_lite0", {"artifacts": dict(zip(names, arts)), "p50_ms": p50, "tests": tests, "runs": a.runs,
                                 "environment": env}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
