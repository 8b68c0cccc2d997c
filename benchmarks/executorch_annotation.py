"""EfficientNet-Lite0 .pte int8: the XNNPACK quantizer's stock annotation against edge's (ReLU6
fused into the conv's observed range, zero padding sharing its input's range), photo by photo.

Both are calibrated on the first 500 photos of ../shared/data/imagenette/train (by file name, batch
16, histogram observers) and scored on the 4,000 photos of imagenette/eval in ExecuTorch's runtime.
edge's predictions come from `lite0_imagenette.py --targets executorch --tag executorch` (run it
first); this script builds the stock one, then compares them with McNemar's exact test and a
bootstrap CI of the top-1 difference.

    python benchmarks/executorch_annotation.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment, save  # noqa: E402
from lite0_imagenette import IMAGENETTE, calibration_dir  # noqa: E402


def stock_predictions(calib: Path, x) -> tuple:
    import numpy as np
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edge.data import list_images, load_images
    from edge.models import MODELS
    from edge.models.loading import load_model
    from edge.quantize.pt2e_xnnpack import _calibrate, capture
    from edge.targets.executorch import PteRunner, lower
    from edge.tensors import TensorSpec

    spec = MODELS.get("efficientnet_lite0")
    model = load_model(spec, "imagenet").eval()
    cal = load_images(list_images(calib), spec.preprocess)
    example = (torch.from_numpy(cal[:1]),)
    ep, batched = capture(model, example)
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(ep.module(), q)
    _calibrate(prepared, [cal], 16 if batched else 1)
    data, delegation = lower(torch.export.export(convert_pt2e(prepared), example))
    path = Path(tempfile.mkdtemp()) / "stock.pte"
    path.write_bytes(data)
    inp = TensorSpec("image", (1, 3, 224, 224), "float32", None, (1, 3, 224, 224), None)
    out = TensorSpec("logits", (1, 1000), "float32", None, (1, 1000), None)
    y = PteRunner(path, [inp], [out]).run(x)["logits"]
    return np.argmax(y, axis=1), delegation, len(data)


def main() -> None:
    import numpy as np
    from scipy.stats import binomtest

    from edge.data import load_images, load_labelled
    from edge.models import MODELS

    ours = np.load(RESULTS / "lite0_imagenette-executorch.npz")
    ds = load_labelled(IMAGENETTE / "eval")
    labels = np.asarray(ds.labels)
    assert np.array_equal(labels, ours["labels"]), "the saved run scored other photos"
    x = load_images(ds.paths, MODELS.get("efficientnet_lite0").preprocess)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        stock, delegation, size = stock_predictions(calibration_dir(Path(tmp) / "calib", 500), x)
    a, b = stock == labels, ours["executorch"] == labels
    diff = b.astype(float) - a.astype(float)
    rng = np.random.default_rng(0)
    boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    row = {"stock_top1": 100 * a.mean(), "edge_top1": 100 * b.mean(), "diff_pp": 100 * diff.mean(),
           "ci95_pp": [100 * np.percentile(boot, 2.5), 100 * np.percentile(boot, 97.5)],
           "only_edge_right": n01, "only_stock_right": n10, "mcnemar_p": binomtest(n01, n01 + n10, 0.5).pvalue,
           "stock_delegation": delegation, "stock_size_bytes": size, "seconds": round(time.perf_counter() - t0, 1)}
    md = ["# EfficientNet-Lite0 .pte int8: stock XNNPACK annotation vs edge's (imagenette/eval, 4,000 photos)", "",
          "Calibration: the first 500 photos of imagenette/train for both. fp32 top-1: 72.62.", "",
          "| stock top-1 | edge top-1 | edge - stock (95% CI) | only edge right / only stock right | McNemar p |",
          "|---|---|---|---|---|",
          f"| {row['stock_top1']:.2f} | {row['edge_top1']:.2f} | {row['diff_pp']:+.2f} ({row['ci95_pp'][0]:+.2f}.."
          f"{row['ci95_pp'][1]:+.2f}) | {n01} / {n10} | {row['mcnemar_p']:.3g} |", ""]
    save("executorch_annotation", {"row": row, "environment": environment()}, "\n".join(md))


if __name__ == "__main__":
    main()
