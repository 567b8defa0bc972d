"""BatchNorm-input statistics as additive sums, and how they are collected.

Per layer the statistics are kept as (element count, per-channel sum, per-channel sum of
squares) in float64. Sums add: the statistics of a whole image set are the sum over its
chunks (or, in a distributed run, an all-reduce of :meth:`StatSums.flatten`), which is
what makes DGH's joint optimisation exact for any set size.

Collection is the hot path of generation (every BN input, every step, forward and
backward), so standard BN layers are swapped, in the generator's private copy of the
model, for :class:`StatsBatchNorm`: eval-mode BN and the sums in one autograd node, instead of
BN + reductions + gradient accumulation; on a CPU its forward and backward are each one
compiled loop (:mod:`bn_kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dgh_deploy.generation.bn_kernels import FusedKernels

INPUT = "<input>"  # the model input counts as a layer; its reference comes from input_prior.py
_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LOW_PRECISION = (torch.float16, torch.bfloat16)  # autocast activations: statistics in float32, then float64


@dataclass
class StatSums:
    names: list[str]
    count: list[float]
    sum: list[torch.Tensor]
    sumsq: list[torch.Tensor]

    def __add__(self, other: StatSums) -> StatSums:
        return self._combine(other, 1.0)

    def __sub__(self, other: StatSums) -> StatSums:
        return self._combine(other, -1.0)

    def _combine(self, other: StatSums, sign: float) -> StatSums:
        def op(a: list, b: list) -> list:
            return [x + sign * y for x, y in zip(a, b, strict=True)]

        return StatSums(self.names, op(self.count, other.count), op(self.sum, other.sum), op(self.sumsq, other.sumsq))

    def detach(self) -> StatSums:
        return StatSums(self.names, list(self.count), [t.detach() for t in self.sum],
                        [t.detach() for t in self.sumsq])

    def mean_std(self, eps: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for n, s, q in zip(self.count, self.sum, self.sumsq, strict=True):
            mean = s / n
            var = torch.clamp(q / n - mean * mean, min=0.0)
            out.append((mean, torch.sqrt(var + eps)))
        return out

    def flatten(self) -> torch.Tensor:
        """One float64 vector: what a distributed run all-reduces (sum) across ranks."""
        dev = self.sum[0].device
        return torch.cat([torch.tensor(self.count, dtype=torch.float64, device=dev), *self.sum, *self.sumsq])

    def unflatten(self, flat: torch.Tensor) -> StatSums:
        """The inverse of :meth:`flatten`, with this object's layout."""
        n = len(self.names)
        sizes = [t.numel() for t in self.sum]
        parts = list(torch.split(flat[n:], sizes + sizes))
        return StatSums(self.names, [float(c) for c in flat[:n].tolist()], parts[: len(sizes)], parts[len(sizes) :])


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))


def _sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Per image in float32, then across images in float64. Adding float32 values in float64
    # is exact for all practical ranges, so the totals do not depend on how the set is split
    # into chunks or torchrun shards; a float32 sum over the batch did, and DGH's optimiser
    # amplifies that rounding (1e-7 after one step, 2e-3 after 20) into visibly other images.
    dims = list(range(2, x.ndim))
    if x.dtype in LOW_PRECISION:  # autocast: accumulate in float32
        x = x.float()
    if not dims:
        return x.double().sum(0), (x * x).double().sum(0)
    return x.sum(dims).double().sum(0), (x * x).sum(dims).double().sum(0)


def _sums_backward(x: torch.Tensor, gs: torch.Tensor | None, gq: torch.Tensor | None) -> torch.Tensor:
    """Gradient of (sum, sum of squares) per channel: ``gs + 2 * gq * x``, in one pass; in
    float32 for a bf16 (autocast) ``x``, which the caller rounds to ``x``'s dtype once, at the end.

    Not in bf16: ``gs`` and ``2 * gq * x`` nearly cancel where a channel's mean is large beside
    its spread, and bf16 coefficients would leave an error of 2^-9 of the mean's size in every
    element's gradient. Not mixed bf16 x float32 either: with a per-channel operand broadcast over
    channels-last images, torch's CPU kernels take a scalar path 10x slower than converting ``x``."""
    work = x.float() if x.dtype in LOW_PRECISION else x
    gs_b = _bcast(gs, work) if gs is not None else torch.zeros((), dtype=work.dtype, device=x.device)
    if gq is None:
        return gs_b.expand_as(work).clone(memory_format=torch.preserve_format)
    return torch.addcmul(gs_b, work, _bcast(2 * gq, work))


class _ChannelSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x)
        return _sums(x)

    @staticmethod
    def backward(ctx: Any, gs: torch.Tensor | None, gq: torch.Tensor | None) -> torch.Tensor | None:
        (x,) = ctx.saved_tensors
        return _sums_backward(x, gs, gq).to(x.dtype)


class _AffineWithSums(torch.autograd.Function):
    """``y = x * scale + shift`` per channel (eval-mode BN, then ReLU with ``relu``), plus the channel
    sums of ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, kernels: FusedKernels,
                relu: bool) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(x, scale, shift)
        ctx.kernels, ctx.relu = kernels, relu
        y, s, q = kernels.forward(x, scale, shift, relu)
        return y, s.double().sum(0), q.double().sum(0)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor | None, gs: torch.Tensor | None,
                 gq: torch.Tensor | None) -> tuple[torch.Tensor | None, None, None, None, None]:
        x, scale, shift = ctx.saved_tensors
        if gy is None:  # the BN output reaches no loss: the statistics' gradient alone
            return _sums_backward(x, gs, gq).to(x.dtype), None, None, None, None
        zero = torch.zeros_like(scale)
        a = gs if gs is not None else zero
        b = 2 * gq if gq is not None else zero
        return ctx.kernels.backward(x, gy, scale, shift, a, b, ctx.relu), None, None, None, None


def channel_sums(x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(count, sum, sum of squares) per channel (dim 1) over every other dim, differentiable."""
    s, q = _ChannelSums.apply(x)
    return float(x.numel() // x.shape[1]), s, q


class StatsBatchNorm(nn.Module):
    """Eval-mode BatchNorm that reports the channel sums of its input to a callback."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, report: Callable[..., None],
                 kernels: FusedKernels | None = None) -> None:
        super().__init__()
        self.kernels = kernels or FusedKernels(compiled=False)
        self.relu = False  # the ReLU after this layer, folded in (activation_fusion.py)
        inv = torch.rsqrt(bn.running_var.detach() + bn.eps)
        w = bn.weight.detach() if bn.weight is not None else torch.ones_like(inv)
        b = bn.bias.detach() if bn.bias is not None else torch.zeros_like(inv)
        self.register_buffer("scale", w * inv)
        self.register_buffer("shift", b - bn.running_mean.detach() * w * inv)
        self.report = report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            y, s, q = _AffineWithSums.apply(x, self.scale, self.shift, self.kernels, self.relu)
        else:
            y, s, q = self.kernels.forward(x, self.scale, self.shift, self.relu)
            s, q = s.double().sum(0), q.double().sum(0)
        self.report(float(x.numel() // x.shape[1]), s, q)
        return y


def bn_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers that carry running statistics (the ones DGH can match)."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


class BNInputRecorder:
    """Collects each BN layer's input sums during a forward of ``module``.

    Plain ``nn.BatchNorm{1,2,3}d`` layers are replaced in ``module`` (which must be a private
    copy) by :class:`StatsBatchNorm`; other BN subclasses keep their own forward and get a
    pre-hook. Use ``recorder.start(x)``, run the model on ``x``, then ``recorder.take(names)``.
    A layer called twice in one forward contributes both inputs. ``kernels``: how the replaced
    layers compute (eagerly where None).
    """

    def __init__(self, module: nn.Module, kernels: FusedKernels | None = None) -> None:
        self.layers = bn_layers(module)
        self.names = [INPUT] + [name for name, _ in self.layers]
        self._current: dict[str, tuple[float, torch.Tensor, torch.Tensor]] = {}
        self._handles = []
        for name, m in self.layers:
            if type(m) in _PLAIN_BN:
                _replace(module, name, StatsBatchNorm(m, self._reporter(name), kernels))
            else:
                self._handles.append(m.register_forward_pre_hook(self._hook(name)))

    def _reporter(self, name: str) -> Callable[[float, torch.Tensor, torch.Tensor], None]:
        def report(n: float, s: torch.Tensor, q: torch.Tensor) -> None:
            if name in self._current:
                n0, s0, q0 = self._current[name]
                n, s, q = n0 + n, s0 + s, q0 + q
            self._current[name] = (n, s, q)

        return report

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        report = self._reporter(name)

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            report(*channel_sums(inputs[0]))

        return hook

    def start(self, model_input: torch.Tensor) -> None:
        self._current = {INPUT: channel_sums(model_input)}

    def seen(self) -> list[str]:
        return [n for n in self.names if n in self._current]

    def take(self, names: list[str]) -> StatSums:
        cur, self._current = self._current, {}
        return StatSums(list(names), [cur[n][0] for n in names], [cur[n][1] for n in names],
                        [cur[n][2] for n in names])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def reference(self, names: list[str], device: torch.device,
                  input_stats: tuple[np.ndarray, np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Target (mean, std) per layer: BN running statistics (std without eps, as MCT), and
        ``input_stats`` for the model input."""
        mods = dict(self.layers)
        out = []
        for name in names:
            if name == INPUT:
                out.append(tuple(torch.as_tensor(v, dtype=torch.float64, device=device) for v in input_stats))
            else:
                m = mods[name]
                out.append((m.running_mean.detach().double().to(device),
                            torch.sqrt(m.running_var.detach().double().clamp_min(0)).to(device)))
        return out


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
