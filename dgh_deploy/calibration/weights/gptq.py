"""GPTQ weight rounding (Frantar et al., ICLR 2023, arXiv 2210.17323): sim's grids and tflite-int8's pre-rounding.

Round-to-nearest treats each weight alone. At 4 bits that leaves most of the layer's output
error on the table, and it makes the calibration images matter only through the activation
ranges and the bias correction. GPTQ rounds a layer's weights one input column at a time and
moves each rounding error onto the columns not yet rounded, weighted by the inverse of the
layer's input second moment ``H = X^T X`` over the calibration set: it minimises
``||(W_q - W) X||^2``, the output error on the calibration inputs. That is the pairing MCT
publishes its W4A8 figures with (EPTQ, a gradient-based relative), and it is where the quality
of the calibration images shows.

The grid (per-channel scales: sim's from its MSE search, a converter's from each channel's
largest weight) is fixed before rounding, so the integer format is the one ``nearest`` produces:
GPTQ changes which grid points are chosen, not the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ROUNDINGS = ("gptq", "nearest")
ROUNDING_HELP = ("how weights are rounded to their grid: gptq (on the calibration set, so that each layer's output "
                 "moves least) or nearest (each weight alone). Default: sim gptq below 8 bits, nearest at 8; "
                 "tflite-int8 and ethos-u gptq for detectors, nearest for classifiers")
_STEP_ELEMENTS = 1 << 24  # unfolded input values per matmul (64 MB): bounds the accumulation's memory


def supports(layer: nn.Module) -> bool:
    """Layers whose input unfolds into the weight's columns: linear and ungrouped 2-D convs
    with explicit padding (the others keep round-to-nearest)."""
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and not isinstance(layer.padding, str)


class InputMoment:
    """``sum x x^T`` over every input vector a layer multiplies with its weight rows."""

    def __init__(self) -> None:
        self.h: torch.Tensor | None = None
        self.rows = 0

    def add(self, layer: nn.Module, x: torch.Tensor) -> None:
        x = x.detach().float()
        per_sample = x[0].numel() * (math.prod(layer.kernel_size) if isinstance(layer, nn.Conv2d) else 1)
        for part in x.split(max(1, _STEP_ELEMENTS // max(per_sample, 1))):
            cols = _columns(layer, part)
            h = (cols.T @ cols).double()
            self.h = h if self.h is None else self.h + h
            self.rows += cols.shape[0]


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input vectors as rows, in the order of ``weight.reshape(out, -1)``'s columns."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    unf = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return unf.transpose(1, 2).reshape(-1, unf.shape[1])


def gptq_round(weight: torch.Tensor, moment: InputMoment, quantize: Callable[[torch.Tensor], torch.Tensor],
               damping: float = 0.01, block: int = 128) -> torch.Tensor:
    """``weight`` rounded by ``quantize`` (fake-quant of an ``out x k`` block of columns with
    per-row grids) so that the output error on the observed inputs is least."""
    w = weight.reshape(weight.shape[0], -1).double().clone()
    if moment.h is None or moment.rows == 0:
        return quantize(w).reshape(weight.shape).to(weight.dtype)
    h = moment.h / moment.rows
    dead = torch.diagonal(h) == 0  # inputs that are always 0: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_cholesky(h, damping)
    if u is None:  # not positive definite even with strong damping: nothing GPTQ can use
        return quantize(w).reshape(weight.shape).to(weight.dtype)
    q = torch.zeros_like(w)
    n = w.shape[1]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        wb, ub = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err = torch.zeros_like(wb)
        for i in range(i2 - i1):
            col = wb[:, i : i + 1]
            qc = quantize(col)
            q[:, i1 + i : i1 + i + 1] = qc
            e = (col - qc) / ub[i, i]
            wb[:, i:] -= e @ ub[i : i + 1, i:]
            err[:, i : i + 1] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return q.reshape(weight.shape).to(weight.dtype)


def _inverse_cholesky(h: torch.Tensor, damping: float) -> torch.Tensor | None:
    """Upper Cholesky factor of ``(H + damp I)^-1``, raising the damping until it exists."""
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    mean_diag = float(torch.diagonal(h).mean())
    for factor in (1.0, 10.0, 100.0):
        try:
            lower = torch.linalg.cholesky(h + damping * factor * mean_diag * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            continue
    return None
