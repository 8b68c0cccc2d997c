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

Copy `runner.py`, the artifact, its `manifest.json` and its labels file (if the manifest names
one, e.g. `labels.txt`) into one folder, then:

```sh
python runner.py model.tflite --threads 4 --runs 100 --warmup 10 --json result.json
python runner.py model.tflite --image photo.jpg                        # what the model sees: top-5 classes
python runner.py model.onnx --input sample.npy --save-output out.npy   # compare outputs with the host
python runner.py model.onnx --input inputs.npz --save-output out.npz   # several inputs/outputs, by name
python runner.py model.ptl --input-shape 1,3,224,224                   # no manifest.json beside it
python runner.py --backend tflite -- -odd-name.bin                     # runtime by choice, not by suffix
```

The inputs and outputs (names, shapes, layouts, dtypes, quantization) come from `manifest.json`
beside the artifact (or `--manifest PATH`). Without one, the runner reads them from a `.tflite`
or `.onnx` file itself and feeds data in the artifact's own layout; `--input-shape` fills in
dynamic dims (`--input-shape NAME=SHAPE` per input when there are several) and gives a `.ptl`
its shapes, which it does not declare.

- `--input FILE`: data in the model's layout and shape (e.g. NCHW): `.npy` for one input, `.npz`
  with one array per input name for several; float32 for float inputs, an integer dtype for
  integer ones (token ids, masks). The runner transposes it to the artifact's layout (NHWC for
  TFLite) and quantizes it for an int8 input; integer inputs are only cast.
- `--image PHOTO` (needs `pip install pillow`): for a model whose single input is an image,
  the photo preprocessed as edge does it (resize, centre crop, mean/std from the manifest). The
  top-5 classes and their scores (the model's output values) go to stderr, named from the labels
  file, and into the JSON as `top5`.
- Without either, data is made per input from the manifest: random normal (seed 0) for an
  image, random token ids for a token input, ones for a mask.
- `--save-output FILE`: the first run's outputs, dequantized, in the model's layout: `.npy` for
  one output, `.npz` by output name for several.
- `--backend tflite|onnx|ptl`: the runtime to use (default: by the file's suffix). Put `--`
  before an artifact whose name starts with `-`.

For steady figures, set the performance governor and watch for throttling:
`echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor`,
`vcgencmd get_throttled` (0x0: never throttled).

## What it prints

One JSON object (schema `edge-bench/1`): `artifact`, `path`, `format`, `runtime` {name, version},
`size_bytes`, `load_ms`, `first_inference_ms`, `warmup`, `runs`, `threads` (null: the runtime's
default), `latency_ms` {mean, std, min, p50, p90, p99} over the timed runs (only the runtime's
own run call is timed), `peak_rss_bytes`, `precision` (without a manifest: int8, uint8, fp16 or
float, from the artifact's tensor types), `input` {shape, dtype, layout, source} and `output`
{shape, dtype} (the first of each, as the artifact takes and returns them), `inputs` and
`outputs` (every one, with its name, tensor, model_shape and model_layout), `top5` (with
`--image`) and `environment` {cpu_model, cores, affinity, governor, machine, os, python,
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
