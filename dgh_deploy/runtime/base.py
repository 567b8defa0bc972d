"""The runner interface: NCHW float32 model input in, float32 outputs out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn


class Runner(ABC):
    """Runs one model on one runtime.

    ``infer`` takes a batch in the model's input space (N x 3 x H x W float32, as the float
    PyTorch model sees it) and returns the outputs as float32 arrays, dequantized where the
    runtime's I/O is integer, so that every runner can be compared with every other.
    """

    name: str = "runner"
    # The same file on the device's own runtime, where the target has one: the job verifies there too.
    device_runner: Runner | None = None
    image_limit: int | None = None  # the most real images this runtime scores (a slow reference runtime)

    @abstractmethod
    def infer(self, x: np.ndarray) -> list[np.ndarray]: ...

    def io_details(self) -> dict[str, Any]:
        """The file's own input and outputs (name, shape, dtype, scale, zero_point; scale 0 for a float
        tensor) as ``{"input": ..., "outputs": [...]}``, for the report's input contract; ``{}`` for a
        runner without a file."""
        return {}

    def infer_all(self, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
        chunks = [self.infer(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def flatten_outputs(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten_outputs(o)]
    return []


class TorchRunner(Runner):
    name = "pytorch-float32"

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()

    @torch.no_grad()
    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return [t.float().numpy() for t in flatten_outputs(out)]


class RecordingRunner(Runner):
    """Another runner's outputs, kept as they pass (up to ``keep_bytes``), so two runtimes scored on
    the same images can be compared image by image afterwards without running either again."""

    def __init__(self, runner: Runner, keep_bytes: int = 512 << 20) -> None:
        self.runner = runner
        self.name = runner.name
        self.keep_bytes = keep_bytes
        self.kept: list[list[np.ndarray]] = []
        self._bytes = 0

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.runner.infer(x)
        size = sum(o.nbytes for o in out)
        if self._bytes + size <= self.keep_bytes:
            self.kept.append(out)
            self._bytes += size
        return out

    def outputs(self, n: int | None = None) -> list[np.ndarray]:
        """The kept outputs, concatenated per output (the first ``n`` images if given)."""
        if not self.kept:
            return []
        return [np.concatenate([batch[k] for batch in self.kept])[:n] for k in range(len(self.kept[0]))]
