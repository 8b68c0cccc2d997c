"""Runners run samples in one runtime: one array per input name in (leading axis = samples, the
model's layout and dtype), one array per output name out (float32, the model's layout). Layout
changes (TFLite's NHWC), quantized inputs and outputs and batch-1 artifacts are handled here,
once, so parity checks and benchmarks treat every format the same way. The PyTorch reference is
a Runner too."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Mapping

import numpy as np

from edge.tensors import TensorSpec

Arrays = Mapping[str, np.ndarray]


class Runner:
    """Base of every runner. Subclasses set `runtime` and implement `_invoke`."""

    runtime = "?"

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.inputs, self.outputs = list(inputs), list(outputs)

    def feeds(self, x: Arrays | np.ndarray) -> dict[str, np.ndarray]:
        """A bare array is the single input's samples."""
        if isinstance(x, np.ndarray):
            if len(self.inputs) != 1:
                raise ValueError(f"{len(self.inputs)} inputs: pass a dict of arrays by input name")
            return {self.inputs[0].name: x}
        return dict(x)

    def run(self, x: Arrays | np.ndarray) -> dict[str, np.ndarray]:
        """Every sample, one at a time (artifacts have batch 1); returns outputs by name."""
        feeds = self.feeds(x)
        n = len(next(iter(feeds.values())))
        outs: dict[str, list[np.ndarray]] = {o.name: [] for o in self.outputs}
        for i in range(n):
            one = {t.name: to_artifact(feeds[t.name][i:i + 1], t) for t in self.inputs}
            for t, y in zip(self.outputs, self._invoke(one)):
                outs[t.name].append(to_model(y, t))
        return {k: np.concatenate(v).astype(np.float32) for k, v in outs.items()}

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One sample: artifact-side arrays by input name -> artifact-side outputs, in self.outputs order."""
        raise NotImplementedError


def to_artifact(x: np.ndarray, t: TensorSpec) -> np.ndarray:
    """A model-side array as the artifact takes it: transposed to its layout, quantized to its
    integer type when the model's input is float (an int8 TFLite input), cast otherwise."""
    perm = t.from_model()
    if perm is not None:
        x = x.transpose(perm)
    dtype = np.dtype(t.dtype)
    if dtype.kind in "iu" and x.dtype.kind == "f" and t.scale:
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / t.scale + (t.zero_point or 0)), info.min, info.max)
    return np.ascontiguousarray(x.astype(dtype, copy=False))


def to_model(y: np.ndarray, t: TensorSpec) -> np.ndarray:
    """An artifact's output as the model gives it: dequantized to float32, in the model's layout."""
    y = np.asarray(y)
    if y.dtype.kind in "iu" and t.scale:
        y = (y.astype(np.float32) - (t.zero_point or 0)) * t.scale
    y = y.astype(np.float32, copy=False)
    perm = t.to_model()
    return y.transpose(perm) if perm is not None else y


class TorchRunner(Runner):
    """The PyTorch fp32 reference, in eager mode, in batches."""

    runtime = "pytorch"

    def __init__(self, model, spec, batch_size: int = 32):
        super().__init__([TensorSpec(i.name, i.shape, i.dtype, i.layout, i.shape, i.layout) for i in spec.inputs],
                         [TensorSpec(o.name, o.shape or (), "float32", o.layout, o.shape, o.layout)
                          for o in spec.outputs])
        self.model = model.eval()
        self.batch_size = batch_size

    def run(self, x: Arrays | np.ndarray, progress: str | None = None) -> dict[str, np.ndarray]:
        import torch

        from edge.models.loading import output_list
        from edge.progress import bar

        feeds = self.feeds(x)
        n = len(next(iter(feeds.values())))
        outs: dict[str, list[np.ndarray]] = {o.name: [] for o in self.outputs}
        with torch.no_grad():
            for i in bar(range(0, n, self.batch_size), progress, total=-(-n // self.batch_size), unit="batch"):
                args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name][i:i + self.batch_size]))
                        for t in self.inputs]
                for t, y in zip(self.outputs, output_list(self.model(*args))):
                    outs[t.name].append(y.detach().float().numpy())
        return {k: np.concatenate(v).astype(np.float32) for k, v in outs.items()}


@contextlib.contextmanager
def quiet_native_stderr():
    """Keep a native library's own lines off stderr inside the block (TFLite's "Created TensorFlow
    Lite XNNPACK delegate for CPU."): file descriptor 2 points at /dev/null meanwhile. Python's
    own errors still raise as exceptions. With --debug (EDGE_DEBUG set) nothing is hidden."""
    if os.environ.get("EDGE_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (captured by pytest, say): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
