"""Checks before a long generation: each failure is one line that says what to change."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.generation.stats import BNInputRecorder
from dgh_deploy.loaded_model import LoadedModel


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DGHError(f"unknown device '{device}'", "use --device cpu or --device cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DGHError(f"--device {device} asked for, but PyTorch sees no CUDA GPU", "use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DGHError(f"device type '{dev.type}' is not supported for generation", "use --device cpu or cuda")
    return dev


def probe_forward(model: LoadedModel, module: nn.Module, recorder: BNInputRecorder, task: Any,
                  device: torch.device, dtype: torch.dtype = torch.float32) -> list[str]:
    """Run one blank image through the generation module; return the BN layers it reaches.

    Raises DGHError when the model cannot take its input size, when the task adapter finds
    no output to stretch, or when no BN layer is reached.
    """
    h, w = model.imgsz
    x = torch.zeros(1, 3, h, w, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            recorder.start(x)
            out = module(x)
    except Exception as exc:
        reason = exc_reason(exc, 160)
        raise DGHError(
            f"model '{model.name}' does not take a 1x3x{h}x{w} image for generation ({reason})",
            "pass the --imgsz the model was trained for",
        ) from exc
    seen = recorder.seen()
    recorder.take(seen)
    task.stretch_outputs(out)  # raises DGHError itself when there is no output layer
    if len(seen) <= 1:
        raise DGHError(
            f"no BatchNorm layer of model '{model.name}' runs in its forward pass, so there are no statistics to match",
            "use --calib real:PATH or --calib noise",
        )
    return seen


def estimate_seconds(step: Callable[[torch.Tensor], None], make_input: Callable[[int], torch.Tensor],
                     n_images: int, iters: int, chunk: int, statistics_pass: Callable[[torch.Tensor], None] | None,
                     ) -> float:
    """Seconds a run should take, from one timed forward + backward of a full chunk, and on the
    two-pass path (``statistics_pass``: the gradient-free forward each step runs first) one timed
    pass of that too: backward to the input alone costs little more than the forward, so that
    pass is far more than a third of a step (YOLOv5n at 640: two passes 1.7x the retained step).
    Each is timed after a warm-up at the timed shape: oneDNN builds its kernels per shape (at
    YOLOv5n's 160 px a first call of a 36-image chunk took 19x a later one). The image pipeline
    and the optimiser over the whole set are timed by the generator beside this."""
    x = make_input(min(chunk, n_images))
    per_image = _timed(step, x, make_input) / len(x)
    if statistics_pass is not None and chunk < n_images:
        with torch.no_grad():
            per_image += _timed(statistics_pass, x.detach(), make_input) / len(x)
    return per_image * n_images * iters


def _timed(fn: Callable[[torch.Tensor], None], x: torch.Tensor, make_input: Callable[[int], torch.Tensor]) -> float:
    fn(x)  # warm-up at this shape
    x = make_input(len(x)).requires_grad_(x.requires_grad)
    t0 = time.perf_counter()
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
