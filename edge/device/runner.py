"""Time one edge artifact (.tflite, .onnx or .ptl) on this machine and print one JSON object.

Self-contained: it needs only the Python standard library, numpy and the one runtime that runs
the artifact, so it can be copied to a Raspberry Pi on its own:

    python runner.py model.tflite --threads 4 --runs 100 --json result.json

The input (shape, layout, dtype, quantization) comes from the manifest.json beside the artifact
(or --manifest), else from --input-shape. Input data is float32 NCHW, preprocessed like the
model's input (--input FILE.npy, else random normal with seed 0); the runner converts it to the
artifact's layout and quantizes it for an int8 input, and dequantizes an int8 output.
The artifact runs once (the first inference), --warmup more times, then --runs timed times; only
the runtime's own invoke/run call is inside the timer. Errors are one line on stderr:
exit 2 for bad input or a missing runtime, 1 for a runtime failure.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:  # main() reports it as one line
    np = None

SCHEMA = "edge-bench/1"
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
RUNTIME_DISTS = ("ai-edge-litert", "tflite-runtime", "tensorflow", "onnxruntime", "torch")
NO_SHAPE_HINT = "pass --manifest PATH or --input-shape (the artifact's input shape, e.g. 1,3,H,W)"


class RunnerError(Exception):
    """A runtime failed on valid input (exit 1)."""

    exit_code = 1


class BadInput(RunnerError):
    """The input is wrong or the runtime is missing (exit 2)."""

    exit_code = 2


# ---------------------------------------------------------------- statistics

def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between the two nearest ranks
    (numpy.percentile's default method)."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_ms: list[float]) -> dict:
    """mean, std (population, like numpy.std), min, p50, p90 and p99 of per-run times in ms."""
    if not times_ms:
        raise ValueError("summarize needs at least one timing")
    s = sorted(float(t) for t in times_ms)
    mean = math.fsum(s) / len(s)
    std = math.sqrt(math.fsum((t - mean) ** 2 for t in s) / len(s))
    return {"mean": mean, "std": std, "min": s[0], "p50": percentile(s, 50),
            "p90": percentile(s, 90), "p99": percentile(s, 99)}


# ---------------------------------------------------------------- tensors

def _quant(tensor_json: dict | None, runtime_quant: tuple) -> tuple:
    """(scale, zero_point) from the manifest's tensor entry, else from the runtime."""
    if tensor_json and tensor_json.get("scale") is not None:
        return float(tensor_json["scale"]), int(tensor_json.get("zero_point") or 0)
    return runtime_quant


def quantize(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float to an integer tensor dtype: round(x / scale + zero_point), clipped to the dtype."""
    if not scale:  # an integer input that is not quantized (TFLite scale 0): cast only
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """An integer output back to float32: (y - zero_point) * scale."""
    if not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else e.__class__.__name__


def _dist_version(dist: str) -> str | None:
    """An installed distribution's version, without importing it (None: not installed)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # Python < 3.8
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------- runtimes
# One class per format: import the runtime, load the artifact, bind an input to a zero-argument
# call (the only thing timed), and read the output of a call.

class TFLiteBackend:
    format = "tflite"

    def __init__(self, threads: int | None, manifest: dict | None):
        self.threads = threads
        self.cls, self.name, self.version = self._import()

    @staticmethod
    def _import() -> tuple:
        """(Interpreter class, runtime name, version): ai-edge-litert, else tflite-runtime, else TensorFlow."""
        import importlib

        reasons = []
        for module, dist in (("ai_edge_litert.interpreter", "ai-edge-litert"),
                             ("tflite_runtime.interpreter", "tflite-runtime"), ("tensorflow", "tensorflow")):
            try:
                mod = importlib.import_module(module)
            except ImportError as e:  # also a wheel built for another numpy major version
                reasons.append(f"{module.split('.')[0]}: {_first_line(e)}")
                continue
            root = sys.modules[module.split(".")[0]]
            cls = mod.lite.Interpreter if dist == "tensorflow" else mod.Interpreter
            return cls, dist, _dist_version(dist) or getattr(root, "__version__", None)
        raise BadInput("running .tflite needs a TFLite interpreter; install one with: pip install ai-edge-litert "
                       f"(or tflite-runtime) [{'; '.join(reasons)}]")

    def load(self, path: Path) -> None:
        try:
            self.interp = self._interpreter(path, builtin=False)
        except Exception as e:  # noqa: BLE001 - the interpreters raise ValueError or RuntimeError
            if "XNNPACK" not in str(e):
                raise BadInput(f"{path.name} is not a loadable TFLite model: {_first_line(e)}") from None
            # XNNPACK refuses some int8 graphs; TFLite's built-in kernels run them.
            self.interp = self._interpreter(path, builtin=True)
            self.name += " (built-in kernels: XNNPACK refused the graph)"
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def _interpreter(self, path: Path, builtin: bool):
        kwargs = {"model_path": str(path), "num_threads": self.threads}
        if builtin:
            resolver = getattr(sys.modules[self.cls.__module__], "OpResolverType", None)
            if resolver is None:
                raise RunnerError("XNNPACK refused the graph and this TFLite interpreter cannot switch it off")
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        interp = self.cls(**kwargs)
        interp.allocate_tensors()
        return interp

    def input_info(self) -> tuple:
        """(shape, numpy dtype, (scale, zero_point)) of the input, as the runtime declares it."""
        return tuple(int(d) for d in self.inp["shape"]), np.dtype(self.inp["dtype"]), tuple(self.inp["quantization"])

    def output_quant(self) -> tuple:
        return tuple(self.out["quantization"]) if np.dtype(self.out["dtype"]).kind in "iu" else (0.0, 0)

    def bind(self, x: np.ndarray):
        self.interp.set_tensor(self.inp["index"], x)
        return self.interp.invoke

    def result(self, ret) -> np.ndarray:
        return self.interp.get_tensor(self.out["index"])


class OrtBackend:
    format = "onnx"
    name = "onnxruntime"
    DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8"}

    def __init__(self, threads: int | None, manifest: dict | None):
        try:
            import onnxruntime
        except ImportError as e:
            raise BadInput(f"running .onnx needs onnxruntime ({_first_line(e)}); install it with: "
                           "pip install onnxruntime") from None
        self.ort, self.threads = onnxruntime, threads
        self.version = getattr(onnxruntime, "__version__", None)
        # Layers an accuracy budget kept in float need onnxruntime's WeightBiasQuantization pass off
        # (it would re-quantize their weights); the manifest says so.
        q = ((manifest or {}).get("target_details") or {}).get("quantization") or {}
        self.disabled = list(q.get("session_disabled_optimizers") or ())

    def load(self, path: Path) -> None:
        opts = self.ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        try:
            self.session = self.ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                                     disabled_optimizers=self.disabled)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BadInput(f"{path.name} is not a loadable ONNX model: {_first_line(e)}") from None
        self.inp = self.session.get_inputs()[0]

    def input_info(self) -> tuple:
        shape = tuple(d if isinstance(d, int) else None for d in self.inp.shape)
        return shape, np.dtype(self.DTYPES.get(self.inp.type, "float32")), (0.0, 0)

    def output_quant(self) -> tuple:
        return 0.0, 0  # edge's QDQ graphs return float tensors

    def bind(self, x: np.ndarray):
        return functools.partial(self.session.run, None, {self.inp.name: x})

    def result(self, ret) -> np.ndarray:
        return ret[0]


class LiteBackend:
    format = "ptl"
    name = "torch-lite-interpreter"

    def __init__(self, threads: int | None, manifest: dict | None):
        try:
            import torch
            from torch.jit.mobile import _load_for_lite_interpreter
        except ImportError as e:
            raise BadInput(f"running .ptl needs torch ({_first_line(e)}); install it with: pip install torch") from None
        self.torch, self._load = torch, _load_for_lite_interpreter
        self.version = torch.__version__
        if threads:
            torch.set_num_threads(threads)
        if manifest and manifest.get("precision") == "int8":  # the engine edge's int8 .ptl files are built for
            torch.backends.quantized.engine = "qnnpack"

    def load(self, path: Path) -> None:
        try:
            self.module = self._load(str(path))
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError or ValueError
            raise BadInput(f"{path.name} is not a loadable TorchScript-mobile model: {_first_line(e)}") from None

    def input_info(self) -> tuple:
        return None, np.dtype("float32"), (0.0, 0)  # a .ptl file does not declare its input shape

    def output_quant(self) -> tuple:
        return 0.0, 0

    def bind(self, x: np.ndarray):
        return functools.partial(self.module, self.torch.from_numpy(x))

    def result(self, ret) -> np.ndarray:
        if isinstance(ret, (tuple, list)):
            ret = ret[0]
        return ret.detach().numpy()

    def context(self):
        return self.torch.no_grad()


BACKENDS = {".tflite": TFLiteBackend, ".onnx": OrtBackend, ".ptl": LiteBackend}


# ---------------------------------------------------------------- input

def load_manifest(artifact: Path, explicit: str | None) -> dict | None:
    """The manifest given, else the manifest.json beside the artifact if it describes it."""
    path = Path(explicit) if explicit else artifact.parent / "manifest.json"
    if not explicit and not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read manifest {path}: {_first_line(e)}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("input"), dict):
        raise BadInput(f"{path} is not an edge manifest (no 'input' object)")
    if manifest.get("artifact") not in (None, artifact.name):
        if explicit:
            raise BadInput(f"manifest {path} describes {manifest['artifact']}, not {artifact.name}")
        return None  # a manifest beside it, but for another artifact
    return manifest


def input_spec(name: str, manifest: dict | None, shape: tuple | None) -> tuple[tuple, str | None]:
    """(logical shape, layout): the float32 data shape (NCHW when the layout is known, what
    --input holds) and the artifact's layout (None: feed the data as given)."""
    if manifest is None:
        if shape is None:
            raise BadInput(f"{name} has no manifest.json beside it; {NO_SHAPE_HINT}")
        return tuple(shape), None
    m = manifest["input"]
    layout = m.get("layout")
    try:
        logical = tuple(int(d) for d in m["shape"])
    except (KeyError, TypeError, ValueError):
        raise BadInput("the manifest's input has no shape") from None
    if layout == "NHWC" and len(logical) == 4:
        logical = (logical[0], logical[3], logical[1], logical[2])
    if shape is not None and tuple(shape) != logical:
        raise BadInput(f"--input-shape {_fmt(shape)} disagrees with the manifest's input {_fmt(logical)} (NCHW)")
    return logical, layout


def input_data(path: str | None, shape: tuple) -> tuple[np.ndarray, str]:
    """The float32 input (from FILE.npy, else random normal with seed 0) and where it came from."""
    if path is None:
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32), "random normal, seed 0"
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read --input {path}: {_first_line(e)}") from None
    if x.dtype.kind not in "fiu" or tuple(x.shape) != tuple(shape):
        raise BadInput(f"--input {path} holds {x.dtype} {_fmt(x.shape)}; expected float32 {_fmt(shape)} (NCHW)")
    return x.astype(np.float32), Path(path).name


def to_artifact(x: np.ndarray, layout: str | None, manifest: dict | None, backend) -> np.ndarray:
    """Lay out and quantize the float32 data the way the artifact takes it; check its shape."""
    if layout == "NHWC" and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    declared, dtype, runtime_quant = backend.input_info()
    if dtype.kind in "iu":
        x = quantize(x, dtype, *_quant(manifest and manifest["input"], runtime_quant))
    x = np.ascontiguousarray(x.astype(dtype, copy=False))
    if declared is not None and (len(declared) != x.ndim or
                                 any(d is not None and d != s for d, s in zip(declared, x.shape))):
        raise BadInput(f"input shape {_fmt(x.shape)} does not fit the artifact's input "
                       f"{_fmt(['?' if d is None else d for d in declared])}")
    return x


def to_float(y: np.ndarray, manifest: dict | None, backend) -> np.ndarray:
    """The output as float32, dequantized when the artifact returns integers."""
    if y.dtype.kind not in "iu":
        return y.astype(np.float32)
    return dequantize(y, *_quant(manifest and manifest.get("output"), backend.output_quant()))


def _fmt(shape) -> str:
    return ",".join(str(d) for d in shape)


# ---------------------------------------------------------------- measurement

def measure(backend, x: np.ndarray, warmup: int, runs: int, user_shape: bool) -> tuple:
    """(first-inference ms, first output, per-run ms): only the runtime's call is timed."""
    clock = time.perf_counter
    with getattr(backend, "context", contextlib.nullcontext)():
        call = backend.bind(x)
        try:
            t0 = clock()
            ret = call()
            first_ms = (clock() - t0) * 1e3
            y = np.array(backend.result(ret))
        except Exception as e:  # noqa: BLE001 - any runtime error ends the run with one line
            if user_shape:  # the only input the artifact could reject is the shape the user gave
                raise BadInput(f"the artifact rejected input shape {_fmt(x.shape)}: {_first_line(e)}") from None
            raise RunnerError(f"inference failed in {backend.name}: {_first_line(e)}") from None
        for _ in range(warmup):
            call()
        times = []
        for _ in range(runs):
            t0 = clock()
            call()
            times.append((clock() - t0) * 1e3)
    return first_ms, y, times


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process. Linux: VmHWM, the peak of this program's own
    address space; ru_maxrss would also count the parent's memory when it was started by
    vfork (Python's subprocess does that), e.g. 750 MB from a host that had imported torch."""
    for line in (_read(Path("/proc/self/status")) or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes; Linux: KiB


def environment() -> dict:
    """What the figures depend on: CPU, cores, frequency governor, OS and versions."""
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "affinity": affinity, "governor": _read(GOVERNOR),
            "machine": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "runtimes": {d: _dist_version(d) for d in RUNTIME_DISTS}}


def cpu_model() -> str | None:
    """/proc/cpuinfo's model name; a Raspberry Pi has none there, so its board model instead."""
    info = _read(Path("/proc/cpuinfo")) or ""
    for key in ("model name", "Model", "Hardware"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    board = _read(Path("/proc/device-tree/model"))
    return board.strip("\x00") if board else (platform.processor() or None)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# ---------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        raise BadInput(message)


def _shape(s: str) -> tuple:
    try:
        shape = tuple(int(v) for v in s.replace("x", ",").split(","))
    except ValueError:
        raise BadInput(f"--input-shape {s!r} is not a shape like 1,3,224,224") from None
    if not all(d > 0 for d in shape):
        raise BadInput(f"--input-shape {s!r} has a dimension below 1")
    return shape


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="runner", description="Time one .tflite/.onnx/.ptl artifact; prints one JSON object.")
    p.add_argument("artifact")
    p.add_argument("--manifest", help="the artifact's manifest.json (default: the one beside it)")
    p.add_argument("--input-shape", type=_shape, help="without a manifest: the input shape, e.g. 1,3,224,224")
    p.add_argument("--threads", type=int, help="threads the runtime may use (default: the runtime's own)")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs after the first inference (default 5)")
    p.add_argument("--input", help="float32 NCHW preprocessed input, .npy (default: random normal, seed 0)")
    p.add_argument("--save-output", help="save the first inference's float32 output to this .npy file")
    p.add_argument("--json", help="also write the JSON result to this file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    a = p.parse_args(argv)
    for name, low in (("runs", 1), ("warmup", 0), ("threads", 1)):
        if getattr(a, name) is not None and getattr(a, name) < low:
            raise BadInput(f"--{name} must be at least {low}")
    return a


def run(a: argparse.Namespace) -> dict:
    """Load, run and time the artifact; returns the JSON result."""
    path = Path(a.artifact)
    if path.suffix not in BACKENDS:
        raise BadInput(f"{path.name}: unknown artifact type; expected one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    manifest = load_manifest(path, a.manifest)
    logical, layout = input_spec(path.name, manifest, a.input_shape)
    data, source = input_data(a.input, logical)
    backend = BACKENDS[path.suffix](a.threads, manifest)
    t0 = time.perf_counter()
    backend.load(path)
    load_ms = (time.perf_counter() - t0) * 1e3
    x = to_artifact(data, layout, manifest, backend)
    first_ms, raw, times = measure(backend, x, a.warmup, a.runs, user_shape=manifest is None)
    if a.save_output:
        with _writing(a.save_output):
            np.save(a.save_output, to_float(raw, manifest, backend))
    return {
        "schema": SCHEMA, "artifact": path.name, "path": str(path.resolve()), "format": backend.format,
        "runtime": {"name": backend.name, "version": backend.version}, "size_bytes": path.stat().st_size,
        "load_ms": load_ms, "first_inference_ms": first_ms, "warmup": a.warmup, "runs": a.runs,
        "threads": a.threads, "latency_ms": summarize(times), "peak_rss_bytes": peak_rss_bytes(),
        "input": {"shape": list(x.shape), "dtype": x.dtype.name, "layout": layout, "source": source},
        "output": {"shape": list(raw.shape), "dtype": raw.dtype.name},
        "environment": environment(),
    }


@contextlib.contextmanager
def _writing(path: str):
    """Turn a failure to write `path` into one line."""
    try:
        yield
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 1: runtime failure, 2: bad input)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        if np is None:
            raise BadInput("the runner needs numpy; install it with: pip install numpy")
        args = parse_args(argv)
        text = json.dumps(run(args), indent=2)
        if args.json:
            with _writing(args.json):
                Path(args.json).write_text(text + "\n")
    except RunnerError as e:
        if debug:
            raise
        print(f"runner: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - never a traceback on a device without --debug
        if debug:
            raise
        print(f"runner: error: {e.__class__.__name__}: {_first_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("runner: interrupted", file=sys.stderr)
        return 130
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
