"""A Runner runs a float32 NCHW batch, preprocessed like the model's input, in one runtime and
returns float32 outputs. Quantized inputs/outputs and NHWC layouts are handled inside each
runner, so parity checks and benchmarks treat every format the same way."""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn as nn


class Runner(Protocol):
    runtime: str  # "pytorch", "onnxruntime", "lite-interpreter", "ai-edge-litert", ...

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, H, W) float32; returns (N, ...) float32."""
        ...


class TorchRunner:
    """The PyTorch fp32 reference, in eager mode."""

    runtime = "pytorch"

    def __init__(self, model: nn.Module, batch_size: int = 32):
        self.model = model.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        outs = [self.model(torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_size]))).numpy()
                for i in range(0, len(x), self.batch_size)]
        return np.concatenate(outs).astype(np.float32)


def run_batch1(fn, x: np.ndarray) -> np.ndarray:
    """Run a batch-1 artifact over every sample of x."""
    return np.concatenate([fn(x[i:i + 1]) for i in range(len(x))]).astype(np.float32)
