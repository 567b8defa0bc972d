"""A module's conv weights rounded by GPTQ onto the grid a converter will compute for them.

TFLite's converters (ai-edge-quantizer, TensorFlow's) quantize a conv's weights symmetric and
narrow-range: per output channel (or per tensor) ``scale = max|w| / 127``, integers -127..127,
each weight rounded to the nearest, after folding the BatchNorm that follows the conv into it
(the file's conv holds ``w * k``, ``k = gamma / sqrt(var + eps)``). Rounding each weight alone
cost YOLOv5n at 640 0.77 mAP50-95 with float activations (33.08 -> 32.31); GPTQ on 64 DGH images
gave back 0.53 of it (32.84).

So GPTQ chooses ``q``, grid points of the folded weight's own grid, and the conv gets ``q / k``:
the converter folds that back to ``q`` and finds every weight already on its grid, so its
rounding keeps GPTQ's choices. Each channel's largest weight is kept at its grid end (+-127
steps), so that the scale the converter computes is the one GPTQ rounded onto.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dgh_deploy.calibration.weights.gptq import InputMoment, gptq_round, supports
from dgh_deploy.progress import progress_bar

QMAX = 127  # narrow range: the int8 grid TFLite's kernels assume for weights
MOMENT_BATCH = 8  # images per forward while the input moments are gathered


@dataclass
class GridRounding:
    """What :func:`round_onto_converter_grid` did, for the report."""

    method: str  # gptq
    layers: int  # convs GPTQ rounded
    left_to_converter: int  # convs the converter rounds to the nearest (grouped, depthwise, linear)
    folded_batchnorms: int  # of the rounded convs, those whose following BN the grid includes
    images: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 1)}


def round_onto_converter_grid(module: nn.Module, images: np.ndarray, per_channel: bool = True,
                              progress: bool = True) -> tuple[nn.Module, GridRounding]:
    """A copy of ``module`` whose convs hold GPTQ-rounded weights on the converter's grid (see the
    module docstring), their input moments taken on ``images`` (the calibration set)."""
    t0 = time.perf_counter()
    rounded = copy.deepcopy(module).eval()
    x = torch.as_tensor(np.asarray(images, np.float32))
    convs = {name: m for name, m in rounded.named_modules() if isinstance(m, nn.Conv2d)}
    chosen = {name: m for name, m in convs.items() if supports(m)}
    bns = following_batchnorms(rounded, chosen, x[:1])
    moments = input_moments(rounded, chosen, x, progress)
    with torch.no_grad():
        for name, conv in chosen.items():
            conv.weight.copy_(_rounded_weight(conv.weight, moments[name], fold_factor(bns.get(name)), per_channel))
    return rounded, GridRounding("gptq", len(chosen), len(convs) - len(chosen), len(bns), len(x),
                                 time.perf_counter() - t0)


def following_batchnorms(module: nn.Module, convs: dict[str, nn.Conv2d],
                         example: torch.Tensor) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Conv name -> the BatchNorm fed by that conv's output, seen in one forward of ``example``
    (a converter folds such a BN into the conv; torch.fx cannot trace every detector)."""
    # The outputs are held, not only their ids: a freed tensor's id is soon another tensor's.
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    found: dict[str, nn.modules.batchnorm._BatchNorm] = {}

    def conv_hook(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            produced[id(out)] = (name, out)
        return hook

    def bn_hook(bn: nn.modules.batchnorm._BatchNorm) -> Any:
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen = produced.get(id(inputs[0]))
            if seen is not None and seen[1] is inputs[0] and bn.running_var is not None:
                found[seen[0]] = bn
        return hook

    handles = [m.register_forward_hook(conv_hook(n)) for n, m in convs.items()]
    handles += [m.register_forward_pre_hook(bn_hook(m)) for m in module.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return found


def input_moments(module: nn.Module, convs: dict[str, nn.Conv2d], images: torch.Tensor,
                  progress: bool) -> dict[str, InputMoment]:
    """Each conv's input second moment over ``images`` (the float model's own activations)."""
    moments = {name: InputMoment() for name in convs}
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=name: moments[n].add(mod, inp[0]))
               for name, m in convs.items()]
    bar = progress_bar(len(images), "weights (GPTQ moments)", progress, unit="img")
    try:
        with torch.no_grad():
            for part in images.split(MOMENT_BATCH):
                module(part)
                if bar is not None:
                    bar.update(len(part))
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.close()
    return moments


def fold_factor(bn: nn.modules.batchnorm._BatchNorm | None) -> torch.Tensor | None:
    """``gamma / sqrt(var + eps)`` per channel: what folding ``bn`` multiplies the conv's weights by."""
    if bn is None:
        return None
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    return (gamma / torch.sqrt(bn.running_var + bn.eps)).double()


def _rounded_weight(weight: torch.Tensor, moment: InputMoment, factor: torch.Tensor | None,
                    per_channel: bool) -> torch.Tensor:
    shape = (-1, *([1] * (weight.ndim - 1)))
    k = factor.view(shape) if factor is not None else torch.ones((), dtype=torch.float64)
    folded = weight.detach().double() * k
    rows = folded.reshape(folded.shape[0], -1)
    top = rows.abs().amax(dim=1) if per_channel else rows.abs().amax().expand(rows.shape[0])
    scale = (top.clamp_min(1e-12) / QMAX).view(-1, 1)

    def quantize(cols: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(cols / scale), -QMAX, QMAX) * scale

    q = gptq_round(folded, moment, quantize).double().reshape(rows.shape)
    _keep_grid_ends(q, rows, scale, per_channel)
    return (q.reshape(folded.shape) / k).to(weight.dtype)


def _keep_grid_ends(q: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, per_channel: bool) -> None:
    """Put back each grid's largest weight at +-127 steps where GPTQ's error feedback moved it: the
    converter's scale is that weight over 127, and a smaller one would make it round again."""
    flat_q, flat_w = (q, rows) if per_channel else (q.reshape(1, -1), rows.reshape(1, -1))
    grid_scale = scale if per_channel else scale[:1]
    top = flat_w.abs().argmax(dim=1, keepdim=True)
    end = torch.sign(flat_w.gather(1, top)) * QMAX * grid_scale
    flat_q.scatter_(1, top, end)
