"""edge: take a PyTorch model to a phone or a Raspberry Pi.

    import edge
    manifests = edge.build(model="mobilenetv2", target="tflite", precision="int8", calib="photos/")
"""
from __future__ import annotations

__version__ = "0.1.0"


def build(model: str = "efficientnet_lite0", target: str = "tflite", *, precision: str = "fp32",
          out: str | None = None, **options) -> dict | list[dict]:
    """Build `model` for `target` ("all" for every target) and verify it; returns the manifest
    (a list of manifests for "all"). Options are BuildConfig fields: weights, calib,
    calib_method, eval, io, input_shape, budget, opset, and for quantization-aware training qat,
    train, epochs, lr, max_steps. Raises edge.errors.EdgeError."""
    from edge.config import BuildConfig
    from edge.pipeline import build as _build
    from edge.targets import TARGETS

    targets = tuple(TARGETS.names()) if target == "all" else (TARGETS.get(target).name,)
    cfg = BuildConfig(model=model, targets=targets, precision=precision, out=out or f"out/{model}", **options)
    manifests = _build(cfg)
    return manifests if target == "all" else manifests[0]


def verify(out_dir: str, eval: str | None = None) -> list[dict]:
    """Re-run the parity check of an existing build folder; raises ParityError on a miss."""
    from edge.pipeline import verify as _verify

    return _verify(out_dir, eval)


def explain(out_dir: str, samples: int = 8, threshold_db: float | None = None) -> list[dict]:
    """Per layer, each artifact of a build folder against its PyTorch model (SQNR, dB); see
    edge.explain for the report's fields and for the table and plot."""
    from edge.explain import explain as _explain

    return _explain(out_dir, samples, threshold_db)


def bench(*paths: str, device: str | None = None, **options) -> list[dict]:
    """Time artifacts (or build folders), each in a fresh process, on this machine or on a device
    ("ssh://user@host[:port]" or "pi-emu"); options: threads, runs, warmup, pin, input_shape."""
    from edge.bench import bench as _bench
    from edge.device.remote import parse

    return _bench(list(paths), device=parse(device) if device else None, progress=False, **options)
