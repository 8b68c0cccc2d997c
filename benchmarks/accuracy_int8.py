"""Accuracy bar: EfficientNet-Lite0 with its real ImageNet weights, calibrated on the 250
unlabelled photos of ../shared/data/imagenet-sample, evaluated on its 750 labelled ones, every
artifact run in its own runtime. Bar: every int8 artifact within 1.0 pp top-1 of fp32.

Also measured in the same run, for contrast (the "before" of the calibration work): edge with
min-max calibration on the targets that offer a choice, and the stock tools with their defaults
on the same model and data: onnxruntime's quantize_static on the raw torch.onnx export, and
torch's FX graph mode with the default qnnpack qconfig, run in the lite interpreter.

    python benchmarks/accuracy_int8.py
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import IMAGENET_SAMPLE, environment, save, unlabelled_calibration_dir  # noqa: E402

from edge.config import BuildConfig  # noqa: E402
from edge.pipeline import build  # noqa: E402
from edge.targets import TARGETS  # noqa: E402

BAR_PP = 1.0


def run(work: Path, name: str, precision: str, targets, calib_method=None) -> list[dict]:
    """One build of several targets: the fp32 reference runs once on the 750 images, and one
    calibration set feeds every target."""
    opts = {}
    if precision == "int8":  # a generous budget so that every figure gets recorded, even a miss
        opts = {"calib": str(work / "calib"), "calib_method": calib_method, "budget": {"max_top1_drop": 100.0}}
    cfg = BuildConfig(model="efficientnet_lite0", targets=tuple(targets), precision=precision, weights="imagenet",
                      eval=str(IMAGENET_SAMPLE), out=str(work / name), **opts)
    return build(cfg)


def row(m: dict, label: str) -> dict:
    p = m["parity"]
    q = (m.get("target_details") or {}).get("quantization") or {}
    return {"target": m["target"], "precision": m["precision"], "setting": label,
            "method": (m.get("calibration") or {}).get("method") or q.get("method"),
            "size_mb": round(m["size_bytes"] / 1e6, 2), "fp32_top1": p["reference_top1"], "top1": p["top1"],
            "top5": p["top5"], "drop_pp": round(p["top1_drop_pp"], 2), "top1_agreement": p.get("top1_agreement"),
            "mean_cosine": p.get("mean_cosine"), "build_seconds": m["build"]["seconds"]}


def _stock_ort(work: Path, calib, x, labels) -> float:
    """onnxruntime quantize_static with its defaults (QDQ, MinMax, per-channel) on the raw export."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edge.models import MODELS, load_model

    model = load_model(MODELS.get("efficientnet_lite0"), "imagenet")
    raw, q = work / "stock.onnx", work / "stock.int8.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(raw), dynamo=False, input_names=["input"],
                      output_names=["output"], opset_version=17)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b[None]}
    quantize_static(str(raw), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    y = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    return 100.0 * float((y.argmax(1) == labels).mean())


def _stock_fx(work: Path, calib, x, labels) -> float:
    """torch FX graph mode PTQ with get_default_qconfig_mapping("qnnpack"), run as a .ptl."""
    import warnings

    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    from torch.jit.mobile import _load_for_lite_interpreter

    from edge.models import MODELS, load_model

    torch.backends.quantized.engine = "qnnpack"
    model = load_model(MODELS.get("efficientnet_lite0"), "imagenet")
    example = (torch.zeros(1, 3, 224, 224),)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("qnnpack"), example)
        for i in range(0, len(calib), 25):
            prepared(torch.from_numpy(calib[i:i + 25]))
        torch.jit.trace(convert_fx(prepared), example)._save_for_lite_interpreter(str(work / "stock.ptl"))
        lite = _load_for_lite_interpreter(str(work / "stock.ptl"))
        y = torch.cat([lite(torch.from_numpy(x[i:i + 1])) for i in range(len(x))]).numpy()
    return 100.0 * float((y.argmax(1) == labels).mean())


def stock_rows(work: Path, fp32_top1: float) -> list[dict]:
    import numpy as np

    from edge.data import list_images, load_images, load_labelled
    from edge.models import MODELS

    pre = MODELS.get("efficientnet_lite0").preprocess
    calib = load_images(list_images(work / "calib"), pre)
    ds = load_labelled(IMAGENET_SAMPLE)
    x, labels = load_images(ds.paths, pre), np.asarray(ds.labels)
    rows = []
    for target, label, fn in (("onnx", "stock onnxruntime quantize_static defaults (for contrast)", _stock_ort),
                              ("torchscript-mobile", "stock torch FX qnnpack defaults (for contrast)", _stock_fx)):
        top1 = fn(work, calib, x, labels)
        rows.append({"target": target, "precision": "int8", "setting": label, "method": "minmax",
                     "size_mb": None, "fp32_top1": fp32_top1, "top1": top1, "top5": None,
                     "drop_pp": round(fp32_top1 - top1, 2), "top1_agreement": None, "mean_cosine": None,
                     "build_seconds": None})
    return rows


def main() -> None:
    if not IMAGENET_SAMPLE.exists():
        sys.exit(f"needs {IMAGENET_SAMPLE} (the shared ImageNet sample)")
    work = Path(tempfile.mkdtemp(prefix="edge-acc-"))
    unlabelled_calibration_dir(work / "calib")
    rows = [row(m, "fp32") for m in run(work, "fp32", "fp32", TARGETS.names())]
    rows += [row(m, "int8 default (edge's calibration)") for m in run(work, "int8", "int8", TARGETS.names())]
    naive = [t.name for t in TARGETS if "minmax" in t.calib_methods() and t.calib_methods()[0] != "minmax"]
    rows += [row(m, "int8 min-max (for contrast)") for m in run(work, "naive", "int8", naive, "minmax")]
    rows += stock_rows(work, rows[0]["fp32_top1"])
    default_int8 = [r for r in rows if r["setting"].startswith("int8 default")]
    passed = all(r["drop_pp"] <= BAR_PP for r in default_int8)
    data = {"environment": environment(torch_threads()), "calibration": "250 unlabelled photos (class_index -1)",
            "evaluation": "750 labelled photos", "bar_pp": BAR_PP, "passed": passed, "rows": rows}
    env = data["environment"]
    lines = [f"# Int8 accuracy: EfficientNet-Lite0 (ImageNet weights) on the shared ImageNet sample\n",
             f"{env['date']}, {env['machine']['processor']}, {env['machine']['cpu_count']} cores, edge "
             f"{env['git_commit']}; calibration: 250 unlabelled photos; top-1/top-5 on 750 labelled photos, "
             f"each artifact run in its own runtime.\n",
             "| target | setting | method | size MB | fp32 top-1 | top-1 | top-5 | change pp | top-1 agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['target']} | {r['setting']} | {r['method'] or '-'} | {fmt(r['size_mb'], '')} | "
                     f"{r['fp32_top1']:.2f} | {r['top1']:.2f} | {fmt(r['top5'], '.2f')} | {-r['drop_pp']:+.2f} | "
                     f"{fmt(r['top1_agreement'], '.3f')} |")
    lines.append(f"\n**Bar: every default int8 artifact within {BAR_PP} pp of fp32 -> "
                 f"{'PASS' if passed else 'FAIL'}**\n")
    save("accuracy_int8", data, "\n".join(lines) + "\n")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
