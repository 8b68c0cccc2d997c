"""Time one edge artifact (.tflite, .onnx, .ptl or .pte) on this machine and print one JSON object.

Self-contained: it needs only the Python standard library, numpy and the one runtime that runs
the artifact, so it can be copied to a Raspberry Pi on its own:

    python runner.py model.tflite --threads 4 --runs 100 --json result.json
    python runner.py model.tflite --image photo.jpg          # also prints the top-5 classes

The inputs and outputs (names, shapes, layouts, dtypes, quantization, how sample data is made)
come from the manifest.json beside the artifact (or --manifest). Without one they come from the
artifact itself (--input-shape fills in dynamic dims, and every shape of a .ptl, which declares
none), and data is fed in the artifact's own layout. Input data is in the model's layout and
shape: --input FILE (.npy for one input, .npz with one array per input name), --image PHOTO
(one image input), else made per input from the manifest's `source` (random normal with seed 0
for an image). The runner transposes it to the artifact's layout and quantizes it for an int8
input; it reads every output by name, dequantizes it and transposes it back to the model's layout.
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
from typing import NamedTuple

try:
    import numpy as np
except ImportError:  # main() reports it as one line
    np = None

SCHEMA = "edge-bench/1"
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
RUNTIME_DISTS = ("ai-edge-litert", "tflite-runtime", "tensorflow", "onnxruntime", "torch", "executorch",
                 "executorch-numpy-runtime")
RANDOM_NORMAL = "random normal, seed {}"


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


def _fmt(shape) -> str:
    return ",".join(str(d) for d in shape)


class Detail(NamedTuple):
    """One input or output as the runtime declares it. A dynamic dim is its symbol (a str)."""

    name: str
    shape: tuple
    dtype: "np.dtype | None"  # None: a type this runner does not know
    quant: tuple = (0.0, 0)  # TFLite's (scale, zero_point); (0.0, 0): not quantized


class Tensor:
    """One input or output: as the artifact takes or returns it (shape, dtype, layout, scale,
    zero_point; `tensor` is its name there, None: by position) and as the model has it
    (model_shape, model_layout). `slot` is its index in the runtime's list once bound.
    (A plain class: dataclasses need the module registered in sys.modules, and this file is
    also loaded by path.)"""

    def __init__(self, name: str, shape: tuple | None, dtype: str | None = None, layout: str | None = None,
                 model_shape: tuple | None = None, model_layout: str | None = None, scale: float | None = None,
                 zero_point: int | None = None, tensor: str | None = None, source: dict | None = None,
                 slot: int | None = None, detail: Detail | None = None):
        self.name, self.shape, self.dtype, self.layout = name, shape, dtype, layout
        self.model_shape, self.model_layout, self.scale, self.zero_point = model_shape, model_layout, scale, zero_point
        self.tensor, self.source, self.slot, self.detail = tensor, source, slot, detail

    def perm(self) -> list | None:
        """The transpose from the model's layout to the artifact's, None when there is none."""
        a, m = self.layout, self.model_layout
        return [m.index(c) for c in a] if a and m and a != m else None

    def quant(self) -> tuple:
        """(scale, zero_point) from the manifest, else from the runtime; scale 0: not quantized."""
        if self.scale:
            return float(self.scale), int(self.zero_point or 0)
        return self.detail.quant if self.detail is not None else (0.0, 0)

    def artifact_dtype(self) -> np.dtype:
        if self.detail is not None and self.detail.dtype is not None:
            return self.detail.dtype
        return np.dtype(self.dtype or "float32")

    def model_dtype(self) -> np.dtype:
        """float32 for float and quantized tensors; an integer (or bool) tensor's own dtype."""
        dt = self.artifact_dtype()
        return dt if dt.kind in "iub" and not self.quant()[0] else np.dtype("float32")


# ---------------------------------------------------------------- runtimes
# One class per format, behind one small interface: import the runtime, load the artifact, say
# what its inputs and outputs are (None: it does not declare them), bind the inputs (by slot, the
# index in that list) to a zero-argument call (the only thing timed), and read every output of a
# call in the runtime's order.

class TFLiteBackend:
    format = "tflite"
    suffix = ".tflite"

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
        self.path = path
        try:
            self.interp = self._interpreter(path, builtin=False)
        except Exception as e:  # noqa: BLE001 - the interpreters raise ValueError or RuntimeError
            if "XNNPACK" not in str(e):
                raise BadInput(f"{path.name} is not a loadable TFLite model: {_first_line(e)}") from None
            # XNNPACK refuses some int8 graphs; TFLite's built-in kernels run them.
            self.interp = self._interpreter(path, builtin=True)
            self.name += " (built-in kernels: XNNPACK refused the graph)"
        self.ins = self.interp.get_input_details()
        self.outs = self.interp.get_output_details()

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

    @staticmethod
    def _detail(d: dict) -> Detail:
        dtype = np.dtype(d["dtype"])
        quant = tuple(d["quantization"]) if dtype.kind in "iu" else (0.0, 0)
        return Detail(d["name"], tuple(int(s) for s in d["shape"]), dtype, quant)

    def inputs(self) -> list[Detail]:
        return [self._detail(d) for d in self.ins]

    def outputs(self) -> list[Detail]:
        return [self._detail(d) for d in self.outs]

    def bind(self, feeds: dict[int, np.ndarray]):
        for slot, x in feeds.items():
            self.interp.set_tensor(self.ins[slot]["index"], x)
        return self.interp.invoke

    def results(self, ret) -> list[np.ndarray]:
        return [self.interp.get_tensor(d["index"]) for d in self.outs]

    def precision(self) -> str:
        return _precision(np.dtype(d["dtype"]) for d in self.interp.get_tensor_details())

    def profile(self, feeds: dict[int, np.ndarray], runs: int) -> dict:
        """TFLite's own op profiling, as benchmark_model --enable_op_profiling gives it: the
        interpreter's Python API has none, so a second copy of the model runs in LiteRT's
        CompiledModel (the C API of the libLiteRt.so that ai-edge-litert ships; same XNNPACK, same
        threads) with its runtime profiler on. Inside the XNNPACK delegate the events are
        XNNPACK's own operators; ops left outside it are the interpreter's nodes. Each profiled
        run alternates with a timed run of the unprofiled interpreter, as for onnxruntime."""
        if self.name != "ai-edge-litert":
            return {"available": False, "why": NO_PROFILER["tflite"]}
        try:
            lrt = _LiteRt(self.path, self.threads or 1)
        except (OSError, AttributeError, RunnerError) as e:  # no libLiteRt.so, an older one, or it refused
            return {"available": False, "why": f"{NO_PROFILER['tflite']} ({_first_line(e)})"}
        try:
            order = [next(i for i, d in enumerate(self.ins) if d["name"] == name) for name in lrt.input_names]
            lrt.write([np.ascontiguousarray(feeds[slot]) for slot in order])
            plain, timed, per_run, run_ms = self.bind(feeds), [], [], []
            lrt.run([])
            for _ in range(runs):
                t0 = time.perf_counter()
                plain()
                timed.append((time.perf_counter() - t0) * 1e3)
                events = []
                lrt.run(events)
                ops: dict[tuple, float] = {}
                for tag, kind, ms, index in events:
                    if kind == "run":
                        run_ms.append(ms)
                        continue
                    # an interpreter node (outside any delegate) by its op and node index; an operator
                    # inside the XNNPACK delegate by its index there
                    key = (f"{tag} #{index}" if kind == "op" else f"XNNPACK #{index}", tag)
                    ops[key] = ops.get(key, 0.0) + ms
                per_run.append(ops)
        except (StopIteration, RunnerError) as e:
            why = "the model's inputs differ between the interpreter and LiteRT" if isinstance(e, StopIteration) \
                else _first_line(e)
            return {"available": False, "why": f"LiteRT's profiler could not run this model: {why}"}
        finally:
            lrt.close()
        return aggregate_profile(per_run, run_ms, f"LiteRT {self.version} CompiledModel profiler (XNNPACK's operators "
                                 "inside the delegate, microsecond resolution)") | {
            "p50_interleaved_ms": summarize(timed)["p50"]}


class OrtBackend:
    format = "onnx"
    suffix = ".onnx"
    name = "onnxruntime"
    DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}

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
        self.path, self.ins = path, self.session.get_inputs()

    def _detail(self, arg) -> Detail:
        shape = tuple(d if isinstance(d, int) and d >= 0 else d if isinstance(d, str) and d else "?"
                      for d in (arg.shape or ()))
        dtype = self.DTYPES.get(arg.type)
        return Detail(arg.name, shape, np.dtype(dtype) if dtype else None)

    def inputs(self) -> list[Detail]:
        return [self._detail(a) for a in self.ins]

    def outputs(self) -> list[Detail]:
        return [self._detail(a) for a in self.session.get_outputs()]

    def bind(self, feeds: dict[int, np.ndarray]):
        return functools.partial(self.session.run, None, {self.ins[slot].name: x for slot, x in feeds.items()})

    def results(self, ret) -> list[np.ndarray]:
        return list(ret)

    def profile(self, feeds: dict[int, np.ndarray], runs: int) -> dict:
        """onnxruntime's own profiler on a second session (the timed one stays unprofiled): each
        node's kernel time in each of `runs` runs after one untimed run. Each profiled run
        alternates with a timed run of the unprofiled session, so that the operators' sum is set
        against a p50 of the same stretch of time (a machine that drifts between the timing and
        the profile cannot pass for profiling overhead)."""
        import tempfile

        opts = self.ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        with tempfile.TemporaryDirectory(prefix="edge-ort-profile-") as tmp:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "ort")
            session = self.ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=self.disabled)
            named = {self.ins[slot].name: x for slot, x in feeds.items()}
            plain, timed = self.bind(feeds), []
            session.run(None, named)
            for _ in range(runs):
                t0 = time.perf_counter()
                plain()
                timed.append((time.perf_counter() - t0) * 1e3)
                session.run(None, named)
            events = json.loads(Path(session.end_profiling()).read_text())
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session"
                       and e.get("name") == "model_run")[1:]  # the first run is untimed
        per_run: list[dict[tuple, float]] = [{} for _ in spans]
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            for i, (start, end) in enumerate(spans):
                if start <= e["ts"] <= end:
                    key = (e["name"][:-len("_kernel_time")], (e.get("args") or {}).get("op_name", "?"))
                    per_run[i][key] = per_run[i].get(key, 0.0) + e["dur"] / 1e3
                    break
        return aggregate_profile(per_run, [(b - a) / 1e3 for a, b in spans],
                                 f"onnxruntime {self.version} profiler (each node's kernel time)") | {
            "p50_interleaved_ms": summarize(timed)["p50"]}

    def precision(self) -> str:
        """From the input/output types; with the onnx package (not needed otherwise), also from
        the initializers, where a QDQ graph with float I/O keeps its int8 weights."""
        types = [d.dtype for d in self.inputs() + self.outputs() if d.dtype is not None]
        try:
            import onnx
            from onnx import helper

            graph = onnx.load(str(self.path), load_external_data=False).graph
            types += [np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)) for t in graph.initializer]
        except Exception:  # noqa: BLE001 - no (working) onnx package: the I/O types above still count
            pass
        return _precision(types)


class LiteBackend:
    format = "ptl"
    suffix = ".ptl"
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

    def inputs(self) -> None:
        return None  # a .ptl file declares neither shapes nor dtypes: positional tensors

    def outputs(self) -> None:
        return None

    def bind(self, feeds: dict[int, np.ndarray]):
        return functools.partial(self.module, *(self.torch.from_numpy(feeds[i]) for i in range(len(feeds))))

    def results(self, ret) -> list[np.ndarray]:
        rets = ret if isinstance(ret, (tuple, list)) else (ret,)
        if not all(isinstance(r, self.torch.Tensor) for r in rets):
            raise RunnerError(f"the module returned {type(ret).__name__} holding non-tensors; "
                              "the runner reads a tensor or a tuple of tensors")
        return [r.detach().numpy() for r in rets]

    def precision(self) -> None:
        return None  # nothing in a .ptl file says so without running torch's own tooling

    def context(self):
        return self.torch.no_grad()


class PteBackend:
    """ExecuTorch programs: the torch-free executorch-numpy-runtime (Python >= 3.12) where it is
    installed, else executorch's own runtime (its pybindings, which link libtorch)."""

    format = "pte"
    suffix = ".pte"

    def __init__(self, threads: int | None, manifest: dict | None):
        self.threads = threads
        reasons = []
        try:
            import executorch_numpy_runtime as enr

            self.rt, self.name, self.version, self.torch = enr.Runtime.get(), "executorch-numpy-runtime", \
                enr.__version__, None
            if threads:  # it exposes no thread setting; its XNNPACK pool sizes itself to the cores
                print(f"runner: warning: executorch-numpy-runtime has no thread setting; --threads {threads} "
                      "is not applied", file=sys.stderr)
            return
        except ImportError as e:
            reasons.append(f"executorch_numpy_runtime: {_first_line(e)}")
        try:
            import torch
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
        except ImportError as e:
            reasons.append(f"executorch: {_first_line(e)}")
            raise BadInput("running .pte needs an ExecuTorch runtime; install one with: pip install "
                           "executorch-numpy-runtime (Python >= 3.12, numpy only) or pip install executorch "
                           f"(needs torch) [{'; '.join(reasons)}]") from None
        if threads:  # process-wide, and only safe before any program is loaded
            portable_lib._unsafe_reset_threadpool(threads)
        self.rt, self.name, self.version, self.torch = Runtime.get(), "executorch", _dist_version("executorch"), torch

    def load(self, path: Path) -> None:
        self.path = path
        try:
            self.program = self.rt.load_program(path.read_bytes())  # kept: its Method does not hold it
            self.method = self.program.load_method("forward")
        except Exception as e:  # noqa: BLE001 - both runtimes raise their own exception types
            raise BadInput(f"{path.name} is not a loadable ExecuTorch program: {_first_line(e)}") from None

    def inputs(self) -> None:
        return None  # positional, as the program's forward takes them; the manifest names them

    def outputs(self) -> None:
        return None

    def bind(self, feeds: dict[int, np.ndarray]):
        args = [feeds[i] for i in range(len(feeds))]
        if self.torch is None:
            return functools.partial(self.method, args)
        return functools.partial(self.method.execute, [self.torch.from_numpy(a) for a in args])

    def results(self, ret) -> list[np.ndarray]:
        return [np.asarray(r.numpy() if hasattr(r, "numpy") else r) for r in ret]

    def precision(self) -> None:
        return None  # the program's int8 lives inside the delegate's blob

    # ETDump events that span others: the whole run, and a delegate's call around its own ops
    SPANS = ("Method::execute", "DELEGATE_CALL")

    def profile(self, feeds: dict[int, np.ndarray], runs: int) -> dict:
        """ExecuTorch's ETDump on a second copy of the program (the timed one stays unprofiled):
        each operator's time in each of `runs` runs after one untimed run, read with
        executorch.devtools' Inspector. Inside the XNNPACK delegate the events are XNNPACK's own
        operators (the executorch wheel's runtime is built with XNNPACK's profiling); outside it,
        the portable kernels' calls. As for onnxruntime, each profiled run alternates with a timed
        run of the unprofiled program."""
        import re
        import tempfile

        if self.torch is None:
            return {"available": False, "why": NO_PROFILER["pte-numpy"]}
        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib

        module = portable_lib._load_for_executorch(str(self.path), enable_etdump=True)
        args = [self.torch.from_numpy(feeds[i]) for i in range(len(feeds))]
        plain, timed = self.bind(feeds), []
        module.forward(args)
        for _ in range(runs):
            t0 = time.perf_counter()
            plain()
            timed.append((time.perf_counter() - t0) * 1e3)
            module.forward(args)
        with tempfile.TemporaryDirectory(prefix="edge-etdump-") as tmp:
            dump = Path(tmp) / "run.etdp"
            module.write_etdump_result_to_file(str(dump))
            with contextlib.redirect_stdout(sys.stderr):  # the Inspector prints as it parses
                blocks = Inspector(etdump_path=str(dump)).event_blocks
        events = [e for b in blocks if b.name == "Execute" for e in b.events if e.perf_data is not None]
        per_run: list[dict[tuple, float]] = [{} for _ in range(runs)]
        run_ms: list[float] = []
        for e in events:
            raw = list(e.perf_data.raw)[-runs:]  # the first, untimed run left out
            if e.name == "Method::execute":
                run_ms = raw
            if e.name in self.SPANS:
                continue
            op = e.name[len("native_call_"):] if e.name.startswith("native_call_") else re.sub(r" #\d+$", "", e.name)
            for i, ms in enumerate(raw):
                per_run[i][(e.name, op)] = per_run[i].get((e.name, op), 0.0) + ms
        return aggregate_profile(per_run, run_ms, f"ExecuTorch {self.version} ETDump (XNNPACK's operators inside "
                                 "the delegate)") | {"p50_interleaved_ms": summarize(timed)["p50"]}


BACKENDS = {b.format: b for b in (TFLiteBackend, OrtBackend, LiteBackend, PteBackend)}


class _LiteRt:
    """A .tflite in LiteRT's CompiledModel with the runtime profiler on, through the C API of the
    libLiteRt.so inside the ai-edge-litert wheel (ctypes; the symbols are versioned VERS_1.0).
    Options go in as LiteRT's opaque TOML payloads: "xnnpack" (num_threads) and
    "runtime_options_string" (enable_profiling), the identifiers the runtime reads."""

    CPU, WRITE = 1, 1  # kLiteRtHwAcceleratorCpu, kLiteRtTensorBufferLockModeWrite
    # tflite::Profiler::EventType: a whole invoke, an interpreter node, a delegate's own operator
    DEFAULT, OPERATOR, DELEGATE_OPERATOR, DELEGATE_PROFILED_OPERATOR = 1, 2, 4, 8

    def __init__(self, path: Path, threads: int):
        import ctypes as C

        import ai_edge_litert

        self.C, P = C, C.c_void_p
        lib = self.lib = C.CDLL(str(Path(ai_edge_litert.__file__).parent / "libLiteRt.so"))
        sigs = {"LiteRtCreateEnvironment": [C.c_int, P, C.POINTER(P)],
                "LiteRtCreateModelFromFile": [P, C.c_char_p, C.POINTER(P)],
                "LiteRtCreateOptions": [C.POINTER(P)], "LiteRtSetOptionsHardwareAccelerators": [P, C.c_int],
                "LiteRtCreateOpaqueOptions": [C.c_char_p, P, P, C.POINTER(P)], "LiteRtAddOpaqueOptions": [P, P],
                "LiteRtCreateCompiledModel": [P, P, P, C.POINTER(P)],
                "LiteRtGetModelSignature": [P, C.c_size_t, C.POINTER(P)],
                "LiteRtGetNumSignatureInputs": [P, C.POINTER(C.c_size_t)],
                "LiteRtGetNumSignatureOutputs": [P, C.POINTER(C.c_size_t)],
                "LiteRtGetSignatureInputTensorByIndex": [P, C.c_size_t, C.POINTER(P)],
                "LiteRtGetSignatureOutputTensorByIndex": [P, C.c_size_t, C.POINTER(P)],
                "LiteRtGetTensorName": [P, C.POINTER(C.c_char_p)], "LiteRtGetRankedTensorType": [P, P],
                "LiteRtGetCompiledModelInputBufferRequirements": [P, C.c_size_t, C.c_size_t, C.POINTER(P)],
                "LiteRtGetCompiledModelOutputBufferRequirements": [P, C.c_size_t, C.c_size_t, C.POINTER(P)],
                "LiteRtGetTensorBufferRequirementsBufferSize": [P, C.POINTER(C.c_size_t)],
                "LiteRtCreateManagedTensorBufferFromRequirements": [P, P, P, C.POINTER(P)],
                "LiteRtLockTensorBuffer": [P, C.POINTER(P), C.c_int], "LiteRtUnlockTensorBuffer": [P],
                "LiteRtRunCompiledModel": [P, C.c_size_t, C.c_size_t, P, C.c_size_t, P],
                "LiteRtCompiledModelGetProfiler": [P, C.POINTER(P)],
                "LiteRtStartProfiler": [P], "LiteRtStopProfiler": [P], "LiteRtResetProfiler": [P],
                "LiteRtGetNumProfilerEvents": [P, C.POINTER(C.c_int)], "LiteRtGetProfilerEvents": [P, C.c_int, P]}
        for name, args in sigs.items():
            getattr(lib, name).argtypes = args
        for name in ("LiteRtDestroyTensorBuffer", "LiteRtDestroyCompiledModel", "LiteRtDestroyModel",
                     "LiteRtDestroyOptions", "LiteRtDestroyEnvironment"):
            getattr(lib, name).argtypes, getattr(lib, name).restype = [P], None
        self.handles: list[tuple[str, object]] = []  # destroyed in reverse order
        try:
            self._open(path, threads)
        except Exception:
            self.close()
            raise

        class Event(C.Structure):  # ProfiledEventData (litert_profiler_event.h): 104 bytes on 64-bit
            _fields_ = [("tag", C.c_char_p), ("event_type", C.c_int), ("start_us", C.c_uint64),
                        ("elapsed_us", C.c_uint64), ("memory", C.c_int64 * 6), ("metadata1", C.c_uint64),
                        ("metadata2", C.c_uint64), ("source", C.c_int)]
        self.Event = Event

    def _open(self, path: Path, threads: int) -> None:
        C, P, lib = self.C, self.C.c_void_p, self.lib
        libc = C.CDLL(None)
        libc.strdup.restype, libc.strdup.argtypes = P, [C.c_char_p]
        with _quiet_stderr():  # LiteRT logs every accelerator it looks for at INFO
            env = self._make("LiteRtCreateEnvironment", 0, None, destroy="LiteRtDestroyEnvironment")
            model = self._make("LiteRtCreateModelFromFile", env, str(path).encode(), destroy="LiteRtDestroyModel")
            opts = self._make("LiteRtCreateOptions", destroy="LiteRtDestroyOptions")
            self._check(lib.LiteRtSetOptionsHardwareAccelerators(opts, self.CPU), "select the CPU")
            for ident, toml in (("xnnpack", f"num_threads = {threads}\n"),
                                ("runtime_options_string", "enable_profiling = true\n")):
                payload = libc.strdup(toml.encode())  # the runtime owns it and frees it with free()
                opaque = self._make("LiteRtCreateOpaqueOptions", ident.encode(), payload, C.cast(libc.free, P))
                self._check(lib.LiteRtAddOpaqueOptions(opts, opaque), f"add the {ident} options")
            self.model = self._make("LiteRtCreateCompiledModel", env, model, opts, destroy="LiteRtDestroyCompiledModel")
        sig = self._make("LiteRtGetModelSignature", model, 0)
        self.input_names, self.sizes, bufs = [], [], {}
        for io in ("Input", "Output"):
            n = C.c_size_t()
            self._check(getattr(lib, f"LiteRtGetNumSignature{io}s")(sig, C.byref(n)), "count the tensors")
            arr = (P * n.value)()
            for i in range(n.value):
                tensor = self._make(f"LiteRtGetSignature{io}TensorByIndex", sig, i)
                ranked = C.create_string_buffer(512)  # LiteRtRankedTensorType, passed back as it came
                self._check(lib.LiteRtGetRankedTensorType(tensor, ranked), "read a tensor type")
                req = self._make(f"LiteRtGetCompiledModel{io}BufferRequirements", self.model, 0, i)
                arr[i] = self._make("LiteRtCreateManagedTensorBufferFromRequirements", env, ranked, req,
                                    destroy="LiteRtDestroyTensorBuffer")
                if io == "Input":
                    name, size = C.c_char_p(), C.c_size_t()
                    self._check(lib.LiteRtGetTensorName(tensor, C.byref(name)), "read a tensor name")
                    self._check(lib.LiteRtGetTensorBufferRequirementsBufferSize(req, C.byref(size)), "size a buffer")
                    self.input_names.append(name.value.decode())
                    self.sizes.append(size.value)
            bufs[io] = arr
        self.ins, self.outs = bufs["Input"], bufs["Output"]
        self.profiler = self._make("LiteRtCompiledModelGetProfiler", self.model)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RunnerError(f"LiteRT could not {what} (status {status})")

    def _make(self, fn: str, *args, destroy: str | None = None):
        out = self.C.c_void_p()
        self._check(getattr(self.lib, fn)(*args, self.C.byref(out)), fn[len("LiteRt"):])
        if destroy:
            self.handles.append((destroy, out))
        return out

    def write(self, arrays: list) -> None:
        for buf, x, size in zip(self.ins, arrays, self.sizes):
            if x.nbytes != size:
                raise RunnerError(f"an input of {x.nbytes} bytes for a LiteRT buffer of {size}")
            addr = self.C.c_void_p()
            self._check(self.lib.LiteRtLockTensorBuffer(buf, self.C.byref(addr), self.WRITE), "lock an input")
            self.C.memmove(addr, x.ctypes.data, size)
            self._check(self.lib.LiteRtUnlockTensorBuffer(buf), "unlock an input")

    def run(self, events: list) -> None:
        """One run under the profiler; appends (tag, "run"|"op"|"delegate", ms, index) to events."""
        lib, C = self.lib, self.C
        lib.LiteRtResetProfiler(self.profiler)
        lib.LiteRtStartProfiler(self.profiler)
        status = lib.LiteRtRunCompiledModel(self.model, 0, len(self.ins), self.ins, len(self.outs), self.outs)
        lib.LiteRtStopProfiler(self.profiler)
        self._check(status, "run the model")
        n = C.c_int()
        self._check(lib.LiteRtGetNumProfilerEvents(self.profiler, C.byref(n)), "count the profile's events")
        if n.value == 0:
            return
        buf = (self.Event * n.value)()
        self._check(lib.LiteRtGetProfilerEvents(self.profiler, n.value, buf), "read the profile's events")
        kinds = {self.OPERATOR: "op", self.DELEGATE_OPERATOR: "delegate", self.DELEGATE_PROFILED_OPERATOR: "delegate"}
        for e in buf:
            tag = (e.tag or b"?").decode(errors="replace")
            if e.event_type not in (self.DEFAULT, *kinds) or e.elapsed_us > 3.6e9:
                continue  # telemetry and runtime-instrumentation events carry no time
            if e.event_type == self.DEFAULT:
                if tag == "Invoke":
                    events.append((tag, "run", e.elapsed_us / 1e3, None))
                continue  # LiteRT's buffer registration and sync around the invoke
            events.append((tag, kinds[e.event_type], e.elapsed_us / 1e3, int(e.metadata1)))

    def close(self) -> None:
        for fn, handle in reversed(self.handles):
            getattr(self.lib, fn)(handle)
        self.handles = []


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the block: native libraries that log there."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _precision(dtypes) -> str:
    """int8 / uint8 / fp16 / float: the narrowest type among an artifact's tensors."""
    kinds = {np.dtype(d).name for d in dtypes}
    for dtype, label in (("int8", "int8"), ("uint8", "uint8"), ("float16", "fp16")):
        if dtype in kinds:
            return label
    return "float"


def backend_class(path: Path, name: str | None):
    """--backend, else the artifact's suffix."""
    if name is not None:
        return BACKENDS[name]
    for cls in BACKENDS.values():
        if path.suffix == cls.suffix:
            return cls
    raise BadInput(f"{path.name}: unknown artifact type; expected one of "
                   f"{', '.join(b.suffix for b in BACKENDS.values())} (or pass --backend)")


# ---------------------------------------------------------------- inputs and outputs

def load_manifest(artifact: Path, explicit: str | None) -> dict | None:
    """The manifest given, else the manifest.json beside the artifact if it describes it."""
    path = Path(explicit) if explicit else artifact.parent / "manifest.json"
    if not explicit and not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read manifest {path}: {_first_line(e)}") from None
    if not isinstance(manifest, dict) or not (isinstance(manifest.get("input"), dict)
                                              or isinstance(manifest.get("inputs"), list) and manifest["inputs"]):
        raise BadInput(f"{path} is not an edge manifest (no 'input' object or 'inputs' list)")
    if manifest.get("artifact") not in (None, artifact.name):
        if explicit:
            raise BadInput(f"manifest {path} describes {manifest['artifact']}, not {artifact.name}")
        return None  # a manifest beside it, but for another artifact
    return manifest


def manifest_tensors(m: dict) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs a manifest describes: schema 2's `inputs`/`outputs` lists, else the
    single `input`/`output` of schema 1 (data in NCHW, transposed for an NHWC artifact)."""
    if isinstance(m.get("inputs"), list) and m["inputs"]:
        ins = [_tensor(e, "input", i) for i, e in enumerate(m["inputs"])]
        outs = [_tensor(e, "output", i) for i, e in enumerate(m.get("outputs") or [])]
    else:
        ins, outs = [_legacy_input(m)], []
    if not outs and isinstance(m.get("output"), dict):
        outs = [_legacy_output(m["output"])]
    _unique([t.name for t in ins], "input")
    _unique([t.name for t in outs], "output")
    return ins, outs


def _unique(names: list[str], kind: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BadInput(f"the manifest names {kind} {dup[0]!r} twice")


def _dims(v, what: str) -> tuple:
    try:
        dims = tuple(int(d) for d in v)
    except (TypeError, ValueError):
        raise BadInput(f"the manifest's {what} has no shape (a list of ints)") from None
    if any(d < 0 for d in dims):
        raise BadInput(f"the manifest's {what} has a negative dim: {_fmt(dims)}")
    return dims


def _tensor(e, kind: str, i: int) -> Tensor:
    """One entry of a schema-2 `inputs`/`outputs` list, checked."""
    if not isinstance(e, dict) or not isinstance(e.get("name"), str):
        raise BadInput(f"the manifest's {kind}s[{i}] has no name")
    what = f"{kind} {e['name']!r}"
    shape = _dims(e.get("shape"), what)
    layout, model_layout = e.get("layout"), e.get("model_layout")
    for lay in (layout, model_layout):
        if lay is not None and (not isinstance(lay, str) or len(lay) != len(shape) or len(set(lay)) != len(lay)):
            raise BadInput(f"the manifest's {what} has layout {lay!r}, which does not name each of its "
                           f"{len(shape)} dims once")
    if layout and model_layout and sorted(layout) != sorted(model_layout):
        raise BadInput(f"the manifest's {what}: layouts {model_layout} and {layout} do not hold the same dims")
    t = Tensor(e["name"], shape, e.get("dtype"), layout, None, model_layout, e.get("scale"), e.get("zero_point"),
               e.get("tensor"), e.get("source") if isinstance(e.get("source"), dict) else None)
    p = t.perm()
    derived = tuple(shape[layout.index(c)] for c in model_layout) if p else shape
    t.model_shape = _dims(e["model_shape"], what) if e.get("model_shape") is not None else derived
    if t.model_shape != derived:
        raise BadInput(f"the manifest's {what}: model_shape {_fmt(t.model_shape)} ({model_layout}) is not "
                       f"shape {_fmt(shape)} ({layout}) transposed")
    return t


def _legacy_input(m: dict) -> Tensor:
    e = m["input"]
    layout = e.get("layout")
    shape = _dims(e.get("shape"), "input")
    model_shape, model_layout = shape, layout
    if layout == "NHWC" and len(shape) == 4:  # schema 1 feeds NCHW data to an NHWC artifact
        model_shape, model_layout = (shape[0], shape[3], shape[1], shape[2]), "NCHW"
    elif layout is not None and len(layout) != len(shape):
        layout = model_layout = None
    pre = m.get("preprocess")
    source = {"kind": "image", **pre} if isinstance(pre, dict) else None
    return Tensor(e.get("name") or "input", shape, e.get("dtype"), layout, model_shape, model_layout,
                  e.get("scale"), e.get("zero_point"), None, source)


def _legacy_output(e: dict) -> Tensor:
    shape = tuple(e["shape"]) if isinstance(e.get("shape"), list) else None
    return Tensor(e.get("name") or "output", shape, e.get("dtype"), model_shape=shape, scale=e.get("scale"),
                  zero_point=e.get("zero_point"))


def bind_tensors(tensors: list[Tensor], details: list[Detail] | None, kind: str, artifact: str) -> None:
    """Give each tensor its slot in the runtime's list: by its `tensor` name, else by position
    (schema 1, and a .ptl, whose inputs and outputs are positional)."""
    names = [d.name for d in details] if details is not None else None
    for i, t in enumerate(tensors):
        if t.tensor is None or names is None:
            t.slot = i
        elif t.tensor in names:
            t.slot = names.index(t.tensor)
        else:
            raise BadInput(f"the manifest's {kind} {t.name!r} is tensor {t.tensor!r}, which {artifact} does not "
                           f"have (its {kind}s: {', '.join(names)})")
        if names is not None:
            if t.slot >= len(names):
                raise BadInput(f"the manifest describes {len(tensors)} {kind}s; {artifact} has {len(names)}")
            t.detail = details[t.slot]
    slots = [t.slot for t in tensors]
    if len(set(slots)) != len(slots):
        raise BadInput(f"the manifest binds two {kind}s to the same tensor of {artifact}")
    if kind == "input" and names is not None and len(tensors) < len(names):
        missing = [n for i, n in enumerate(names) if i not in slots]
        raise BadInput(f"{artifact} also takes input {', '.join(missing)}, which the manifest does not describe")
    for t in tensors:
        _check_dtype(t, kind, artifact)


def _check_dtype(t: Tensor, kind: str, artifact: str) -> None:
    """A manifest whose dtype disagrees with the artifact describes another build."""
    if t.detail is None or t.detail.dtype is None or t.dtype is None:
        return
    if np.dtype(t.dtype) != t.detail.dtype:
        raise BadInput(f"the manifest says {kind} {t.name!r} is {t.dtype}, but {artifact} "
                       f"{'takes' if kind == 'input' else 'returns'} {t.detail.dtype.name}")


def artifact_tensors(backend, artifact: str, shapes: list[tuple]) -> list[Tensor]:
    """Without a manifest: the inputs as the artifact declares them, fed in its own layout;
    --input-shape ([NAME=]SHAPE, in order or by name) fills in dynamic dims and .ptl shapes."""
    details = backend.inputs()
    if details is None:  # .ptl, .pte
        if not shapes:
            raise BadInput(f"{artifact} has no manifest.json and a {Path(artifact).suffix} file declares no input "
                           "shapes; pass "
                           "--input-shape (the model's input shape, e.g. 1,3,224,224; once per input)")
        names = [n or (f"input{i}" if len(shapes) > 1 else "input") for i, (n, _) in enumerate(shapes)]
        return [Tensor(n, s, "float32", model_shape=s, slot=i) for i, (n, (_, s)) in enumerate(zip(names, shapes))]
    given = _assign_shapes(shapes, [d.name for d in details], artifact)
    tensors, dynamic = [], []
    for i, d in enumerate(details):
        shape = given.get(d.name) or d.shape
        if any(not isinstance(s, int) for s in shape):
            dynamic.append(f"{d.name}={_fmt(_marked(s) for s in shape)}")
        tensors.append(Tensor(d.name, shape, None, model_shape=shape, tensor=d.name, slot=i, detail=d))
    if dynamic:
        raise BadInput(f"{artifact} has no manifest.json and dynamic input dims (marked ?): {'; '.join(dynamic)}; "
                       f"pass --input-shape {'NAME=SHAPE per input' if len(details) > 1 else 'SHAPE'} with every dim, "
                       "in the artifact's own layout")
    return tensors


def _marked(dim) -> str:
    """A dim for an error message: its size, or its symbol marked with ? (just ? without one)."""
    return str(dim) if isinstance(dim, int) else "?" if dim == "?" else f"{dim}?"


def _assign_shapes(shapes: list[tuple], names: list[str], artifact: str) -> dict:
    """{input name: shape} from --input-shape [NAME=]SHAPE: unnamed ones in the inputs' order."""
    if len(shapes) > len(names):
        raise BadInput(f"{len(shapes)} --input-shape given; {artifact} has {len(names)} input(s): {', '.join(names)}")
    given = {}
    for i, (name, shape) in enumerate(shapes):
        name = name if name is not None else names[i]
        if name not in names:
            raise BadInput(f"--input-shape {name}=...: {artifact} has no input {name!r} (its inputs: "
                           f"{', '.join(names)})")
        given[name] = shape
    return given


def artifact_outputs(backend, results: list) -> list[Tensor]:
    """Without a manifest: the outputs as the artifact returns them (a .ptl: as the first call did)."""
    details = backend.outputs()
    if details is None:
        names = ["output"] if len(results) == 1 else [f"output{i}" for i in range(len(results))]
        return [Tensor(n, tuple(r.shape), r.dtype.name, model_shape=tuple(r.shape), slot=i)
                for i, (n, r) in enumerate(zip(names, results))]
    return [Tensor(d.name, d.shape, None, tensor=d.name, slot=i, detail=d) for i, d in enumerate(details)]


def check_shapes(tensors: list[Tensor], shapes: list[tuple]) -> None:
    """With a manifest, --input-shape may only repeat the shapes it gives."""
    given = _assign_shapes(shapes, [t.name for t in tensors], "the manifest")
    for t in tensors:
        if t.name in given and tuple(given[t.name]) != tuple(t.model_shape):
            note = f" ({t.model_layout})" if t.model_layout else ""
            raise BadInput(f"--input-shape {_fmt(given[t.name])} disagrees with the manifest's input "
                           f"{_fmt(t.model_shape)}{note}")


# ---------------------------------------------------------------- input data

def make_data(t: Tensor, seed: int) -> tuple[np.ndarray, str]:
    """Data for one input in the model's shape, from its source: random normal (an image, or no
    source), uniform over a range, random tokens below vocab_size, or an all-ones mask."""
    src = t.source or {}
    kind, dtype, shape = src.get("kind"), t.model_dtype(), t.model_shape
    rng = np.random.default_rng(seed)
    integer = dtype.kind in "iub"
    if kind == "range":
        low, high = _number(src, "low", t), _number(src, "high", t)
        x = rng.integers(int(low), int(high), shape) if integer else rng.uniform(low, high, shape)
        return x.astype(dtype), f"uniform [{low}, {high}), seed {seed}"
    if kind == "tokens":
        vocab = int(_number(src, "vocab_size", t))
        return rng.integers(0, vocab, shape).astype(dtype), f"random tokens in [0, {vocab}), seed {seed}"
    if kind == "mask":
        return np.ones(shape, dtype), "ones (mask)"
    if integer:  # an integer input that says nothing about its values: 1 is a valid index and an open mask
        return np.ones(shape, dtype), "ones (integer input without a source)"
    x = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    note = f" (unknown source kind {kind!r})" if kind not in (None, "image") else ""
    return x, RANDOM_NORMAL.format(seed) + note


def _number(src: dict, key: str, t: Tensor) -> float:
    v = src.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise BadInput(f"the manifest's input {t.name!r} has source kind {src.get('kind')!r} without a number "
                       f"{key!r}")
    return v


def read_inputs(path: str, tensors: list[Tensor]) -> dict[str, np.ndarray]:
    """--input: .npy for one input, .npz with one array per input name; each in the model's
    shape, float for float inputs, an integer dtype for integer inputs."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {None: loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read --input {path}: {_first_line(e)}") from None
    names = [t.name for t in tensors]
    if None in arrays:
        if len(tensors) != 1:
            raise BadInput(f"--input {path} holds one array; the artifact takes {len(tensors)} inputs "
                           f"({', '.join(names)}): pass an .npz with one array per name")
        arrays = {names[0]: arrays[None]}
    missing, extra = [n for n in names if n not in arrays], [n for n in arrays if n not in names]
    if missing or extra:
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + \
            ([f"holds {', '.join(extra)}, which the artifact does not take"] if extra else [])
        raise BadInput(f"--input {path} {' and '.join(parts)}; it needs one array per input: {', '.join(names)}")
    where = (lambda n: f"--input {path}") if len(tensors) == 1 else (lambda n: f"--input {path}[{n}]")
    return {t.name: check_data(arrays[t.name], t, where(t.name)) for t in tensors}


def check_data(x: np.ndarray, t: Tensor, where: str) -> np.ndarray:
    """One input's data in the model's dtype, or a one-line error."""
    dtype = t.model_dtype()
    integer = dtype.kind in "iub"
    if tuple(x.shape) != tuple(t.model_shape) or x.dtype.kind not in ("iub" if integer else "fiu"):
        note = f" ({t.model_layout})" if t.model_layout else ""
        raise BadInput(f"{where} holds {x.dtype} {_fmt(x.shape)}; expected {dtype.name} {_fmt(t.model_shape)}{note}")
    if integer and x.size and dtype.kind != "b":
        info = np.iinfo(dtype)
        if x.min() < info.min or x.max() > info.max:
            raise BadInput(f"{where} holds values from {x.min()} to {x.max()}, outside {dtype.name}")
    return x.astype(dtype)


def load_photo(path: str, t: Tensor) -> np.ndarray:
    """A photo preprocessed as edge does it (edge.data.load_image): RGB, the shorter side resized
    to `resize` (bilinear), a centre crop of `crop`, (x - mean) / std on the 0-255 scale, CHW;
    batch 1."""
    try:
        from PIL import Image
    except ImportError:
        raise BadInput("--image needs Pillow; install it with: pip install pillow") from None
    src = t.source
    resize, crop = int(_number(src, "resize", t)), int(_number(src, "crop", t))
    if (src.get("color") or "RGB") != "RGB":
        raise BadInput(f"--image: the input's color is {src['color']!r}; this runner makes RGB only")
    for key in ("mean", "std"):
        v = src.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(c, (int, float)) for c in v)):
            raise BadInput(f"the manifest's input {t.name!r} has no {key} (three numbers, 0-255 scale)")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resize / min(w, h)
            bilinear = getattr(Image, "Resampling", Image).BILINEAR
            im = im.resize((max(crop, round(w * s)), max(crop, round(h * s))), bilinear)
    except OSError as e:  # also PIL's UnidentifiedImageError
        raise BadInput(f"--image {path} is not a readable image ({_first_line(e)})") from None
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    im = im.crop((left, top, left + crop, top + crop))
    x = np.asarray(im, dtype=np.float32)
    x = (x - np.asarray(src["mean"], np.float32)) / np.asarray(src["std"], np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1))[None]
    if x.shape != tuple(t.model_shape):
        raise BadInput(f"--image gives {_fmt(x.shape)} (crop {crop}); the input {t.name!r} is {_fmt(t.model_shape)}")
    return x


def image_input(tensors: list[Tensor]) -> Tensor:
    """The single image input --image feeds."""
    kinds = [(t.source or {}).get("kind") for t in tensors]
    if kinds != ["image"]:
        have = ", ".join(f"{t.name} (source {k})" for t, k in zip(tensors, kinds))
        raise BadInput(f"--image needs a manifest whose single input is an image (source kind 'image'); "
                       f"this artifact's inputs: {have}")
    return tensors[0]


def input_data(a: argparse.Namespace, tensors: list[Tensor]) -> tuple[dict, list[str]]:
    """{input name: data in the model's shape} and, per input, where it came from."""
    if a.image is not None:
        t = image_input(tensors)
        return {t.name: load_photo(a.image, t)}, [Path(a.image).name]
    if a.input is not None:
        return read_inputs(a.input, tensors), [Path(a.input).name] * len(tensors)
    made = [make_data(t, seed) for seed, t in enumerate(tensors)]
    return {t.name: x for t, (x, _) in zip(tensors, made)}, [s for _, s in made]


# ---------------------------------------------------------------- layout and quantization

def to_artifact(x: np.ndarray, t: Tensor) -> np.ndarray:
    """Model data the way the artifact takes it: transposed, quantized (a float input to an int8
    tensor) or cast (an integer input), in the declared shape."""
    perm = t.perm()
    if perm:
        x = x.transpose(perm)
    dtype = t.artifact_dtype()
    scale, zero_point = t.quant()
    if dtype.kind in "iu" and scale:
        x = quantize(x, dtype, scale, zero_point)
    x = np.ascontiguousarray(x.astype(dtype, copy=False))
    declared = t.detail.shape if t.detail is not None else None
    if declared is not None and (len(declared) != x.ndim or
                                 any(isinstance(d, int) and d != s for d, s in zip(declared, x.shape))):
        raise BadInput(f"input shape {_fmt(x.shape)} does not fit the artifact's input "
                       f"{_fmt(_marked(d) for d in declared)}")
    return x


def to_model(y: np.ndarray, t: Tensor) -> np.ndarray:
    """An output the way the model has it: float32 (dequantized when quantized), in its layout."""
    if y.dtype.kind in "iu" and t.quant()[0]:
        y = dequantize(y, *t.quant())
    elif y.dtype.kind == "f":
        y = y.astype(np.float32)
    if not t.perm():
        return y
    if y.ndim != len(t.layout):
        raise BadInput(f"output {t.name!r} has {y.ndim} dims; the manifest gives it layout {t.layout}")
    return y.transpose([t.layout.index(c) for c in t.model_layout])


def save_outputs(path: str, outputs: list[Tensor], ys: dict[str, np.ndarray]) -> None:
    """.npy for one output, else an .npz by output name (written to `path` as given)."""
    with _writing(path):
        if len(outputs) == 1:
            np.save(path, ys[outputs[0].name])
        else:
            with open(path, "wb") as f:
                np.savez(f, **ys)


def top5(y: np.ndarray, artifact: Path, manifest: dict) -> list[dict]:
    """The five highest scores of the first output (the first sample), named from the labels file
    the manifest names (beside the artifact), else by class index."""
    scores = y.reshape(y.shape[0], -1)[0] if y.ndim > 1 else y.reshape(-1)
    labels = read_labels(artifact, manifest.get("labels"))
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:5]  # ties: lower index first
    return [{"index": i, "label": labels[i] if labels and i < len(labels) else None, "score": float(scores[i])}
            for i in order]


def read_labels(artifact: Path, name) -> list[str] | None:
    if not name:
        return None
    path = artifact.parent / name
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        print(f"runner: note: cannot read the labels file {path} ({e.strerror}); showing class indices",
              file=sys.stderr)
        return None


def print_top5(rows: list[dict], photo: str) -> None:
    print(f"top-5 for {photo}:", file=sys.stderr)
    for rank, r in enumerate(rows, 1):
        label = r["label"] if r["label"] is not None else f"class {r['index']}"
        print(f"  {rank}. {label} (index {r['index']}): {r['score']:.4f}", file=sys.stderr)


# ---------------------------------------------------------------- measurement

NO_PROFILER = {
    "tflite": "TFLite's per-operator profile needs ai-edge-litert (its LiteRT runtime has the profiler; "
              "tflite-runtime's and TensorFlow's Python interpreters have none): pip install ai-edge-litert",
    "ptl": "the lite interpreter has no per-operator profiler here",
    "pte-numpy": "executorch-numpy-runtime has no ETDump; ExecuTorch's own runtime (pip install executorch) "
                 "profiles .pte",
}


def aggregate_profile(per_run: list[dict[tuple, float]], run_ms: list[float], source: str, top: int = 15) -> dict:
    """Per-run {(node, op type): ms} into the profile: the median over runs of the per-run sum of
    node times, the mean ms per run by op type and for the slowest nodes, each with its share."""
    import statistics

    n = max(1, len(per_run))
    nodes: dict[tuple, float] = {}
    for run in per_run:
        for k, v in run.items():
            nodes[k] = nodes.get(k, 0.0) + v / n
    total = sum(nodes.values()) or 1.0
    by_op: dict[str, list] = {}
    for (node, op), ms in nodes.items():
        by_op.setdefault(op, [0, 0.0])
        by_op[op][0] += 1
        by_op[op][1] += ms
    by_block: dict[str, float] = {}
    for (node, _), ms in nodes.items():
        block = _block(node)
        if block is not None:
            by_block[block] = by_block.get(block, 0.0) + ms
    return {"source": source, "runs": len(per_run),
            "sum_ms": statistics.median(sum(r.values()) for r in per_run) if per_run else None,
            "run_ms": statistics.median(run_ms) if run_ms else None,
            "by_op_type": [{"op": op, "nodes": c, "ms": round(ms, 4), "share": round(ms / total, 4)}
                           for op, (c, ms) in sorted(by_op.items(), key=lambda kv: -kv[1][1])],
            "by_node": [{"node": node, "op": op, "module": _module(node), "ms": round(ms, 4), "share": round(ms / total, 4)}
                        for (node, op), ms in sorted(nodes.items(), key=lambda kv: -kv[1])[:top]],
            "by_block": [{"block": b, "ms": round(ms, 4), "share": round(ms / total, 4)}
                         for b, ms in sorted(by_block.items(), key=lambda kv: -kv[1])]}


def _module(node: str) -> str | None:
    """The PyTorch module a node came from, where the exporter's name says it: torch.onnx names a
    node /scope/.../Op_n, each scope a module's full name (features.0.0) or its name in its
    parent (_act0 under _blocks.1: _blocks.1._act0)."""
    parts = node.split("/")
    if not node.startswith("/") or len(parts) < 3:
        return None
    full = ""
    for scope in parts[1:-1]:
        full = scope if not full or scope.startswith(full + ".") else f"{full}.{scope}"
    return full or None


def _block(node: str) -> str | None:
    """The top-level block (features.3, classifier.1): the second scope of the node's name."""
    parts = node.split("/")
    if not node.startswith("/") or len(parts) < 3:
        return None
    return parts[2] if len(parts) >= 4 else parts[1]


def profile(backend, feeds: dict[int, np.ndarray], runs: int, p50_ms: float) -> dict:
    """The runtime's per-operator profile of `runs` more runs, with how the sum of its operator
    times compares with the p50 of unprofiled runs interleaved with them (p50_interleaved_ms;
    p50_ms is the main timing's); {"available": False, "why"} where it has none."""
    if not hasattr(backend, "profile"):
        return {"available": False, "why": NO_PROFILER.get(backend.format, "no per-operator profiler")}
    p = backend.profile(feeds, runs)
    if p.get("available") is False:
        return p
    base = p.get("p50_interleaved_ms") or p50_ms
    return {"available": True, **p, "p50_ms": p50_ms,
            "sum_vs_p50": round(p["sum_ms"] / base, 3) if p.get("sum_ms") and base else None}


def measure(backend, feeds: dict[int, np.ndarray], warmup: int, runs: int, user_shape: bool) -> tuple:
    """(first-inference ms, every output of the first call, per-run ms): only the runtime's call is timed."""
    clock = time.perf_counter
    with getattr(backend, "context", contextlib.nullcontext)():
        call = backend.bind(feeds)
        try:
            t0 = clock()
            ret = call()
            first_ms = (clock() - t0) * 1e3
            ys = [np.array(y) for y in backend.results(ret)]
        except RunnerError:
            raise
        except Exception as e:  # noqa: BLE001 - any runtime error ends the run with one line
            if user_shape:  # the only input the artifact could reject is the shape the user gave
                shapes = "; ".join(_fmt(x.shape) for x in feeds.values())
                raise BadInput(f"the artifact rejected input shape {shapes}: {_first_line(e)}") from None
            raise RunnerError(f"inference failed in {backend.name}: {_first_line(e)}") from None
        for _ in range(warmup):
            call()
        times = []
        for _ in range(runs):
            t0 = clock()
            call()
            times.append((clock() - t0) * 1e3)
    return first_ms, ys, times


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
    """--input-shape [NAME=]SHAPE -> (name or None, shape)."""
    name, _, dims = s.rpartition("=")
    try:
        shape = tuple(int(v) for v in dims.replace("x", ",").split(","))
    except ValueError:
        raise BadInput(f"--input-shape {s!r} is not a shape like 1,3,224,224 (or NAME=1,3,224,224)") from None
    if not all(d > 0 for d in shape):
        raise BadInput(f"--input-shape {s!r} has a dimension below 1")
    return name or None, shape


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="runner", description="Time one .tflite/.onnx/.ptl/.pte artifact; prints one JSON object.")
    p.add_argument("artifact", help="the artifact (put -- before a name that starts with -)")
    p.add_argument("--manifest", help="the artifact's manifest.json (default: the one beside it)")
    p.add_argument("--backend", choices=list(BACKENDS), help="the runtime (default: by the artifact's suffix)")
    p.add_argument("--input-shape", type=_shape, action="append", default=[], metavar="[NAME=]SHAPE",
                   help="without a manifest: an input's shape, e.g. 1,3,224,224 (needed for dynamic dims and .ptl; "
                        "repeat per input, in order or by name)")
    p.add_argument("--threads", type=int, help="threads the runtime may use (default: the runtime's own)")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs after the first inference (default 5)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--input", help="input data in the model's layout and shape: .npy (one input) or .npz (one "
                                      "array per input name) (default: made from the manifest, e.g. random normal)")
    data.add_argument("--image", help="a photo for the model's image input, preprocessed as edge does; "
                                      "prints the top-5 classes (needs Pillow)")
    p.add_argument("--save-output", help="save the first inference's outputs in the model's layout: .npy for one, "
                                         ".npz by output name for several")
    p.add_argument("--json", help="also write the JSON result to this file")
    p.add_argument("--profile", action="store_true", help="then --runs more runs under the runtime's per-operator "
                                                          "profiler (LiteRT's for .tflite, onnxruntime's, ExecuTorch's ETDump): time by op "
                                                          "type and by node")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    a = p.parse_args(argv)
    for name, low in (("runs", 1), ("warmup", 0), ("threads", 1)):
        if getattr(a, name) is not None and getattr(a, name) < low:
            raise BadInput(f"--{name} must be at least {low}")
    return a


def run(a: argparse.Namespace) -> dict:
    """Load, run and time the artifact; returns the JSON result."""
    path = Path(a.artifact)
    backend_cls = backend_class(path, a.backend)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    manifest = load_manifest(path, a.manifest)
    if manifest is not None:
        inputs, outputs = manifest_tensors(manifest)
        check_shapes(inputs, a.input_shape)
    elif a.image is not None:
        raise BadInput("--image needs the artifact's manifest.json (how to preprocess, which labels); "
                       "pass --manifest PATH")
    backend = backend_cls(a.threads, manifest)
    t0 = time.perf_counter()
    backend.load(path)
    load_ms = (time.perf_counter() - t0) * 1e3
    if manifest is not None:
        bind_tensors(inputs, backend.inputs(), "input", path.name)
        bind_tensors(outputs, backend.outputs(), "output", path.name)
    else:
        inputs, outputs = artifact_tensors(backend, path.name, a.input_shape), []
    data, sources = input_data(a, inputs)
    feeds = {t.slot: to_artifact(data[t.name], t) for t in inputs}
    first_ms, raw, times = measure(backend, feeds, a.warmup, a.runs,
                                   user_shape=manifest is None and bool(a.input_shape))
    outputs = outputs or artifact_outputs(backend, raw)
    if max(t.slot for t in outputs) >= len(raw):
        raise BadInput(f"{path.name} returned {len(raw)} tensor(s); the manifest describes {len(outputs)} outputs")
    ys = {t.name: to_model(raw[t.slot], t) for t in outputs}
    if a.save_output:
        save_outputs(a.save_output, outputs, ys)
    result = {
        "schema": SCHEMA, "artifact": path.name, "path": str(path.resolve()), "format": backend.format,
        "runtime": {"name": backend.name, "version": backend.version}, "size_bytes": path.stat().st_size,
        "precision": backend.precision() if manifest is None else None,
        "load_ms": load_ms, "first_inference_ms": first_ms, "warmup": a.warmup, "runs": a.runs,
        "threads": a.threads, "latency_ms": summarize(times), "peak_rss_bytes": peak_rss_bytes(),
        "input": {"shape": list(feeds[inputs[0].slot].shape), "dtype": feeds[inputs[0].slot].dtype.name,
                  "layout": inputs[0].layout, "source": sources[0]},
        "output": {"shape": list(raw[outputs[0].slot].shape), "dtype": raw[outputs[0].slot].dtype.name},
        "inputs": [_describe(t, feeds[t.slot], data[t.name]) | {"source": s} for t, s in zip(inputs, sources)],
        "outputs": [_describe(t, raw[t.slot], ys[t.name]) for t in outputs],
        "environment": environment(),
    }
    if a.profile:
        result["profile"] = profile(backend, feeds, a.runs, result["latency_ms"]["p50"])
    if a.image is not None:
        result["top5"] = top5(ys[outputs[0].name], path, manifest)
        print_top5(result["top5"], Path(a.image).name)
    return result


def _describe(t: Tensor, artifact_side: np.ndarray, model_side: np.ndarray) -> dict:
    return {"name": t.name, "tensor": t.tensor, "shape": list(artifact_side.shape), "dtype": artifact_side.dtype.name,
            "layout": t.layout, "model_shape": list(model_side.shape), "model_layout": t.model_layout}


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
