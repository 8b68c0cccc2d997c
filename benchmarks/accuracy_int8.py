"""Accuracy bar: EfficientNet-Lite0 with its real ImageNet weights, calibrated on the 250
unlabelled photos of ../shared/data/imagenet-sample, evaluated on its 750 labelled ones, every
artifact run in its own runtime. Bar: every int8 artifact within 1.0 pp top-1 of fp32.

Also measured in the same run, for contrast: the naive min-max calibration on the targets that
offer a choice (the "before" of the calibration work).

    python benchmarks/accuracy_int8.py
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, environment, save, unlabelled_calibration_dir  # noqa: E402

import edge  # noqa: E402
from edge.targets import TARGETS  # noqa: E402

BAR_PP = 1.0


def run(work: Path, name: str, precision: str, targets, calib_method=None) -> list[dict]:
    opts = {"weights": "imagenet", "eval": str(IMAGENET_SAMPLE)}
    if precision == "int8":
        opts.update(calib=str(work / "calib"), calib_method=calib_method, budget={"max_top1_drop": 100.0})
    ms = []
    for t in targets:
        ms.append(edge.build("efficientnet_lite0", t, precision=precision, out=str(work / name / t), **opts))
    return ms


def row(m: dict, label: str) -> dict:
    p = m["parity"]
    q = (m.get("target_details") or {}).get("quantization") or {}
    return {"target": m["target"], "precision": m["precision"], "setting": label,
            "method": (m.get("calibration") or {}).get("method") or q.get("method"),
            "size_mb": round(m["size_bytes"] / 1e6, 2), "fp32_top1": p["reference_top1"], "top1": p["top1"],
            "top5": p["top5"], "drop_pp": round(p["top1_drop_pp"], 2), "top1_agreement": p.get("top1_agreement"),
            "mean_cosine": p.get("mean_cosine"), "build_seconds": m["build"]["seconds"]}


def main() -> None:
    if not IMAGENET_SAMPLE.exists():
        sys.exit(f"needs {IMAGENET_SAMPLE} (the shared ImageNet sample)")
    work = Path(tempfile.mkdtemp(prefix="edge-acc-"))
    unlabelled_calibration_dir(work / "calib")
    rows = [row(m, "fp32") for m in run(work, "fp32", "fp32", TARGETS.names())]
    rows += [row(m, "int8 default (edge's calibration)") for m in run(work, "int8", "int8", TARGETS.names())]
    naive = [t.name for t in TARGETS if "minmax" in t.calib_methods() and t.calib_methods()[0] != "minmax"]
    rows += [row(m, "int8 naive min-max (for contrast)") for m in run(work, "naive", "int8", naive, "minmax")]
    default_int8 = [r for r in rows if r["setting"].startswith("int8 default")]
    passed = all(r["drop_pp"] <= BAR_PP for r in default_int8)
    data = {"environment": environment(torch_threads()), "calibration": "250 unlabelled photos (class_index -1)",
            "evaluation": "750 labelled photos", "bar_pp": BAR_PP, "passed": passed, "rows": rows}
    env = data["environment"]
    lines = [f"# Int8 accuracy: EfficientNet-Lite0 (ImageNet weights) on the shared ImageNet sample\n",
             f"{env['date']}, {env['machine']['processor']}, {env['machine']['cpu_count']} cores, edge "
             f"{env['git_commit']}; calibration: 250 unlabelled photos; top-1/top-5 on 750 labelled photos, "
             f"each artifact run in its own runtime.\n",
             "| target | setting | method | size MB | fp32 top-1 | top-1 | top-5 | drop pp | top-1 agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['setting']} | {r['method'] or '-'} | {r['size_mb']} | "
                     f"{r['fp32_top1']:.2f} | {r['top1']:.2f} | {r['top5']:.2f} | {r['drop_pp']:+.2f} | "
                     f"{r['top1_agreement']:.3f} |")
    lines.append(f"\n**Bar: every default int8 artifact within {BAR_PP} pp of fp32 -> "
                 f"{'PASS' if passed else 'FAIL'}**\n")
    save("accuracy_int8", data, "\n".join(lines) + "\n")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
