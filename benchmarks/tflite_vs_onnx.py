"""edge's TFLite artifacts against its ONNX artifacts of the same model and precision, timed in one
process at 1 thread, interleaved run by run (order alternating) so that each ratio is paired
against the machine's drift: MobileNetV2, ResNet18 and EfficientNet-Lite0, fp32 and int8. With
each TFLite artifact, its XNNPACK partitions and the ops left outside them (the manifest's
delegation), and for ResNet18 also the artifact as edge built it before its padded max-pool was
zero-padded after the ReLU (edge padding, which the converter writes as MIRROR_PAD: outside
XNNPACK), so the change is measured in the same run.

    python benchmarks/tflite_vs_onnx.py [--runs 300] [--work DIR] [--build-only]

MobileNetV2 and ResNet18 have no offline ImageNet weights here: random weights (batch norm
re-estimated), which time like trained ones. int8 calibrates on the built-in photos. --work
(default benchmarks/sweeps/tflite-vs-onnx) keeps the builds and reuses them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, interleaved_times, paired_times, save  # noqa: E402

MODELS = ("mobilenetv2", "resnet18", "efficientnet_lite0")
OPEN_BUDGET = {"max_abs": 1e9, "min_cosine": 0.0, "min_top1_agreement": 0.0, "min_top5_overlap": 0.0,
               "max_top1_drop": 100.0}
WARMUP = 20


def build_one(model: str, target: str, precision: str, out: Path, edge_pad: bool = False) -> Path:
    """The artifact of one build (reused when its manifest is there). edge_pad: build as edge did
    before (every padded max-pool edge-padded), for the before/after pair."""
    from edge import build
    from edge.targets import tflite

    if (out / target / "manifest.json").is_file():
        m = json.loads((out / target / "manifest.json").read_text())
        return out / target / m["artifact"]
    keep = tflite._nonnegative
    if edge_pad:
        tflite._nonnegative = lambda node, constants: False
    try:
        m = build(model, target, precision=precision, weights="imagenet" if model == "efficientnet_lite0" else "random",
                    out=str(out), budget=OPEN_BUDGET)
    finally:
        tflite._nonnegative = keep
    return out / target / m["artifact"]


def artifacts(work: Path) -> dict[str, Path]:
    out = {}
    for model in MODELS:
        for precision in ("fp32", "int8"):
            for target in ("onnx", "tflite"):
                out[f"{model} {precision} {target}"] = build_one(model, target, precision, work / model / precision)
            if model == "resnet18":
                out[f"{model} {precision} tflite-edge-pad"] = build_one(model, "tflite", precision,
                                                                         work / model / f"{precision}-edge-pad", True)
    return out


def runner(path: Path):
    """A callable that runs the artifact once on a fixed input, 1 thread."""
    import numpy as np

    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        feed = {i.name: np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in i.shape], np.float32)}
        return lambda: s.run(None, feed)
    from edge.targets.tflite import interpreter

    it = interpreter(path, threads=1)
    d = it.get_input_details()[0]
    x = np.random.default_rng(0).random(d["shape"], np.float32)
    if d["dtype"] != np.float32:
        x = (x * 100).astype(d["dtype"])
    it.set_tensor(d["index"], x)
    return it.invoke


def delegation(path: Path) -> dict | None:
    m = json.loads((path.parent / "manifest.json").read_text())
    export = next((s for s in m["stages"] if s["stage"] == "export"), {})
    if "delegation" in export:
        return export["delegation"]
    if path.suffix == ".tflite":  # an artifact built before the manifest recorded it
        from edge.targets.tflite import interpreter, xnnpack_partitions

        return xnnpack_partitions(interpreter(path, threads=1)._get_ops_details())
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "sweeps" / "tflite-vs-onnx")
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    arts = artifacts(a.work)
    if a.build_only:
        return
    names = list(arts)
    times, p50 = interleaved_times({n: runner(arts[n]) for n in names}, a.runs, WARMUP)
    tests = {}
    for model in MODELS:
        for precision in ("fp32", "int8"):
            k = f"{model} {precision}"
            tests[f"{k}: tflite / onnx"] = paired_times(times[f"{k} onnx"], times[f"{k} tflite"])
            if model == "resnet18":
                tests[f"{k}: tflite (edge pad, before) / onnx"] = paired_times(times[f"{k} onnx"], times[f"{k} tflite-edge-pad"])
                tests[f"{k}: tflite / tflite (edge pad, before)"] = paired_times(times[f"{k} tflite-edge-pad"], times[f"{k} tflite"])
    deleg = {n: delegation(arts[n]) for n in names if arts[n].suffix == ".tflite"}
    env = environment(threads=1)
    md = ["# edge's TFLite against its ONNX, same model and precision (`benchmarks/tflite_vs_onnx.py`)", "",
          f"Machine: {env['machine']['processor']}, {env['machine']['cpu_count']} cores, load average at start "
          f"{env['load_average_at_start']}; git {env['git_commit']}; 1 thread, every artifact in one process, {a.runs} runs "
          f"each interleaved (after {WARMUP} warm-up); TFLite: {env['versions'].get('tflite_interpreter')} "
          f"with XNNPACK; ONNX: onnxruntime {env['versions'].get('onnxruntime')}. Ratios: median of the per-run ratios, 95% "
          "bootstrap interval, Wilcoxon signed-rank p.", "",
          "| artifact | size MB | p50 ms | XNNPACK partitions | ops outside XNNPACK |", "|---|---|---|---|---|"]
    for n in names:
        d = deleg.get(n)
        md.append(f"| {n} | {arts[n].stat().st_size / 1e6:.2f} | {p50[n]} | {d['partitions'] if d else '-'} | "
                  f"{', '.join(f'{k} x{v}' for k, v in d['outside'].items()) or 'none' if d else '-'} |")
    md += ["", "| comparison | ratio (95% CI) | Wilcoxon p |", "|---|---|---|"]
    md += [f"| {k} | {v['ratio']}x ({v['ci95'][0]}..{v['ci95'][1]}) | {v['wilcoxon_p']:.2g} |" for k, v in tests.items()]
    save("tflite_vs_onnx", {"p50_ms": p50, "sizes": {n: arts[n].stat().st_size for n in names}, "paired": tests,
                            "delegation": deleg, "runs": a.runs, "warmup": WARMUP,
                            "seconds": round(time.perf_counter() - t0, 1), "environment": env}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
