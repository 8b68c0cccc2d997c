"""edge: take a PyTorch model to a phone or a Raspberry Pi.

    import edge
    manifest = edge.build("mobilenetv2", "tflite", precision="int8", calib="photos/")
    edge.verify("out/mobilenetv2")

Every public function here is safe to call any number of times in one process: none shares its
name with a submodule (those are edge.pipeline, edge.verification, edge.explaining and
edge.benchmark), so importing one never replaces a function.
"""
from __future__ import annotations

__version__ = "0.2.0"


def build(model: str = "efficientnet_lite0", target: str = "tflite", *, precision: str = "fp32",
          out: str | None = None, **options) -> dict | list[dict]:
    """Build `model` for `target` ("all": every installed target) and check it; returns the manifest
    (a list of manifests for "all"). Options are BuildConfig fields and stage options: weights,
    calib, calib_method, eval, train, io, input_shape, tasks, budget, opset; the stages'
    options: fine-tuning (finetune, num_classes, finetune_epochs), pruning (prune, prune_macs,
    prune_steps), distillation (distill_epochs), quantization-aware training (qat, epochs, lr,
    max_steps). `target` may be a comma list. Raises edge.errors.EdgeError."""
    from edge.config import BuildConfig
    from edge.pipeline import build as _build

    cfg = BuildConfig(model=model, targets=tuple(t.strip() for t in target.split(",")), precision=precision, out=out or f"out/{model}", **options)
    manifests = _build(cfg)
    return manifests if target == "all" or "," in target else manifests[0]


def verify(out_dir: str, eval: str | None = None, *, model: str | None = None, weights: str | None = None,
           budget: dict | None = None) -> list[dict]:
    """Re-run the check of a build folder from the check samples it holds (with `eval`: on labelled
    data, against the reference model; `model`/`weights` name a user's network and weights files).
    Raises edge.errors.ParityError on a miss."""
    from edge.verification import verify as _verify

    return _verify(out_dir, eval, budget, model, weights)


def explain(out_dir: str, samples: int = 8, threshold_db: float | None = None, *, model: str | None = None,
            weights: str | None = None) -> list[dict]:
    """Per layer, each artifact of a build folder against its PyTorch model (SQNR, dB); see
    edge.explaining for the report's fields and for the table and plot."""
    from edge.explaining import explain as _explain

    return _explain(out_dir, samples, threshold_db, model=model, weights=weights)


def bench(*paths: str, device: str | None = None, **options) -> list[dict]:
    """Time artifacts (or build folders), each in a fresh process, on this machine or on a device
    ("ssh://user@host[:port]" or "pi-emu"); options: threads, runs, warmup, pin, input_shape, and
    profile=True for each result's per-operator profile (onnxruntime, ExecuTorch's ETDump)."""
    from edge.benchmark import bench as _bench
    from edge.device.remote import parse

    return _bench(list(paths), device=parse(device) if device else None, progress=False, **options)
