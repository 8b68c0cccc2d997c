"""What goes onto a device: `runner.py`, a self-contained benchmark runner (standard library,
numpy and one runtime), and a short README for the person at the device.

    from edge.device import write_runner
    write_runner("to-pi/")    # to-pi/runner.py and to-pi/README.md; copy them with the artifacts
"""
from __future__ import annotations

import shutil
from pathlib import Path

RUNNER = Path(__file__).with_name("runner.py")
ERROR_PREFIX = "runner: error: "


def runner_error(stderr: str, returncode: int) -> str:
    """The runner's own one-line error from its stderr, else its last line, else the exit code."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix(ERROR_PREFIX) for ln in lines if ln.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else (lines[-1] if lines else f"exit code {returncode}")

README = """\
# edge runner

`runner.py` times one edge artifact (`.tflite`, `.onnx` or `.ptl`) on this device and prints one
JSON object. It needs only Python 3, numpy and the one runtime that runs the artifact.

## Install one runtime (Raspberry Pi OS Bookworm, 64-bit, Python 3.11)

Bookworm's system Python refuses `pip install` outside a virtual environment, so make one:

```sh
python3 -m venv ~/edge-venv && . ~/edge-venv/bin/activate
pip install ai-edge-litert numpy        # for .tflite
pip install onnxruntime numpy           # for .onnx
pip install torch numpy                 # for .ptl (large)
```

For `.tflite`, `tflite-runtime` also works (`pip install tflite-runtime "numpy<2"`: its last
wheels, 2.14, were built for numpy 1.x).

## Run

Copy `runner.py`, the artifact and its `manifest.json` into one folder, then:

```sh
python runner.py model.tflite --threads 4 --runs 100 --warmup 10 --json result.json
python runner.py model.onnx --input sample.npy --save-output out.npy   # compare outputs with the host
python runner.py model.onnx --input-shape 1,3,224,224                  # no manifest.json beside it
```

The input comes from `manifest.json` beside the artifact (or `--manifest PATH`); without one,
`--input-shape` gives it (float32, in the artifact's own layout). `--input` takes float32 NCHW
data, preprocessed like the model's input; the runner converts it to NHWC and quantizes it for
an int8 TFLite input. Without `--input` it uses random normal data (seed 0).

For steady figures, set the performance governor and watch for throttling:
`echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor`,
`vcgencmd get_throttled` (0x0: never throttled).

## What it prints

One JSON object (schema `edge-bench/1`): `artifact`, `path`, `format`, `runtime` {name, version},
`size_bytes`, `load_ms`, `first_inference_ms`, `warmup`, `runs`, `threads` (null: the runtime's
default), `latency_ms` {mean, std, min, p50, p90, p99} over the timed runs (only the runtime's
own run call is timed), `peak_rss_bytes`, `input` {shape, dtype, layout, source}, `output`
{shape, dtype} and `environment` {cpu_model, cores, affinity, governor, machine, os, python,
numpy, runtimes}. Errors are one line, `runner: error: ...`: exit 2 for bad input or a missing
runtime, 1 for a runtime failure.
"""


def write_runner(out_dir: str | Path) -> Path:
    """Copy runner.py into `out_dir` (created if needed) with a README for the device; returns
    the copied runner's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(README)
    return Path(shutil.copyfile(RUNNER, out / RUNNER.name))
