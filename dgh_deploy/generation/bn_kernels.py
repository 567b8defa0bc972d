"""The arithmetic of a BN layer in a generation step, as one fused loop each way on a CPU.

For every BN input ``x`` a step computes the eval-mode affine ``y = x * scale + shift`` and the
per-image channel sums of ``x`` and ``x * x`` (forward), then ``gx = a + b * x + gy * scale``
(backward, ``a`` and ``b`` the statistics loss's per-channel coefficients). Eager PyTorch makes
each operation a pass over memory (the float32 conversion, the square, two sums, the affine; in
backward the conversion, two multiply-adds, the cast back), and at ResNet-20's 16 to 64 channels
those passes, not the convolutions, took most of a bf16 step on a 2-core AMX Xeon. Compiled by
``torch.compile`` (inductor), each direction is one vectorised loop that reads ``x`` once, with the
ReLU that follows a BN layer folded in where fx finds one (activation_fusion.py): ResNet-20's
whole bf16 process ran 1.7x to 1.8x the fp32 eager baseline's speed, against 0.9x to 1.0x eager on
the same machine (bench/results/whole_process_r20_fused_cpu.json).

The tensors are viewed as (images, pixels, channels) for channels-last inputs and (images,
channels, pixels) otherwise, so that the loops run along memory. One loop per direction and dtype
serves every layer, chunk and coarse-to-fine stage (see :meth:`FusedKernels._run`), kept in
inductor's disk cache: about 19 s of compiling on a machine's first run, about 4 s of tracing in
later processes. CPU only: a GPU step is one CUDA graph already (cuda_graph.py). Where compiling
fails (no C++ compiler, say), or a loop's first call disagrees with the eager function on the same
inputs (a stale inductor cache), the same functions run eagerly after one warning;
``TORCHDYNAMO_DISABLE=1`` turns compiling off.

Per-image sums are float32, as the eager path's: the caller adds them across images in float64.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from dgh_deploy.errors import exc_reason

log = logging.getLogger("dgh_deploy")

# Below this many elements an image's fused loop saves less than a compiled call costs (the test
# suite's toy networks run eagerly). Decided per image, never per chunk: the compiled and the eager
# sums add in different orders, and an image's sums must not depend on the chunk it is in.
MIN_IMAGE_ELEMENTS = 1024
_COMPILED_DTYPES = (torch.float32, torch.bfloat16)
_SLOW_COMPILE_S = 5.0  # a first call this slow was a compile: say so once
# Directions whose compiled loop matched the eager one on its first call in this process. Checked
# because inductor, reusing a cache written under another instruction-set cap (ATEN_CPU_CAPABILITY),
# returned loops whose first generation step was NaN on a 2-core AMX Xeon.
_checked: set[str] = set()
_AGREEMENT_RTOL = 1e-2  # bf16 outputs round to 3 digits; sums add in another order


def _agrees(got: Any, want: Any) -> bool:
    """Whether the compiled loop's outputs (a tensor or a tuple of them) are the eager loop's, to
    rounding: finite where those are, and within a relative error of their norm."""
    pairs = zip(got, want, strict=True) if isinstance(want, tuple) else [(got, want)]
    for g, w in pairs:
        g, w = g.double(), w.double()
        if not torch.equal(torch.isfinite(g), torch.isfinite(w)):
            return False
        finite = torch.isfinite(w)
        if (g[finite] - w[finite]).norm() > _AGREEMENT_RTOL * w[finite].norm() + 1e-12:
            return False
    return True


def _channel_dim(x: torch.Tensor) -> int:
    """2 where ``x`` is a channels-last image batch (viewed as images, pixels, channels), else 1
    (images, channels, pixels)."""
    channels_last = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return 2 if channels_last else 1


def _rows(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``t`` as the 3-d view of :func:`_channel_dim` (a copy where ``t`` is laid out otherwise)."""
    n, c = t.shape[:2]
    if channel_dim == 2:
        rows = t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, -1, c)
    else:
        rows = t.contiguous().view(n, c, -1)
    return rows.detach()  # not a view: dynamo would guard on the shape of the tensor it views


def _unrows(t: torch.Tensor, like: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """The inverse of :func:`_rows`: ``t`` in ``like``'s shape and memory format. Not a view (detached):
    autograd forbids modifying a view a custom function returns in place, and models do modify a
    BN layer's output in place (``nn.ReLU(inplace=True)``, ``out += shortcut``)."""
    if channel_dim == 2:
        n, c, h, w = like.shape
        return t.view(n, h, w, c).permute(0, 3, 1, 2).detach()
    return t.view(like.shape).detach()


def _per_channel(v: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return v.view(-1) if channel_dim == 2 else v.view(-1, 1)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or its own dtype where that is wider (the tests' float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def affine_and_sums(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channel_dim: int,
                    floor: torch.Tensor | float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x * scale + shift`` in ``x``'s dtype (clamped below at ``floor``: 0 is a ReLU), and per image
    the float32 channel sums of ``x`` and ``x * x`` (``x``: a :func:`_rows` view)."""
    pixels = 3 - channel_dim
    y = torch.addcmul(_per_channel(shift, channel_dim), x, _per_channel(scale, channel_dim))
    if floor is not None:
        y = y.clamp_min(floor)
    xf = _wide(x)
    return y, xf.sum(pixels), (xf * xf).sum(pixels)


def affine_and_sums_grad(x: torch.Tensor, gy: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                         a: torch.Tensor, b: torch.Tensor, channel_dim: int,
                         floor: torch.Tensor | float | None) -> torch.Tensor:
    """The gradient of :func:`affine_and_sums`: ``a + b * x + gy * scale``, ``gy`` only where
    ``x * scale + shift > floor``, computed in float32 (or wider) and rounded to ``x``'s dtype once.
    Not in bf16: ``a`` and ``b * x`` nearly cancel where a channel's mean is large beside its spread."""
    xf, per_channel = _wide(x), (lambda v: _per_channel(v, channel_dim))
    gy = gy.to(xf.dtype)
    if floor is not None:
        gy = torch.where(torch.addcmul(per_channel(shift), xf, per_channel(scale)) > floor, gy, 0.0)
    gx = torch.addcmul(per_channel(a), xf, per_channel(b))
    return torch.addcmul(gx, gy, per_channel(scale)).to(x.dtype)


_EAGER: dict[str, Callable[..., Any]] = {"forward": affine_and_sums, "backward": affine_and_sums_grad}
_compiled: dict[str, Callable[..., Any]] = {}  # this process's compiled functions, made on first use
_compiling_failed: list[str] = []  # the reason, once compiling has failed in this process


class FusedKernels:
    """:func:`affine_and_sums` and its gradient on whole BN inputs: compiled where that pays
    (``compiled``, a CPU, float32 or bfloat16, images of at least :data:`MIN_IMAGE_ELEMENTS`), else eager."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled
        self.ran_compiled = False  # whether any call ran compiled: what a run's statistics record

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                relu: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y, sum, sum of squares)``: the affine (then ReLU with ``relu``) in ``x``'s shape and
        format, and the float32 sums per image and channel, (images, channels)."""
        dim = _channel_dim(x)
        # Per-channel operands in their loop's dtype beforehand: a cast inside a compiled loop
        # is redone for every element (it made the backward loop 2.5x slower).
        y, s, q = self._run("forward", _rows(x, dim), scale.to(x.dtype), shift.to(x.dtype), dim, relu=relu)
        return _unrows(y, x, dim), s, q

    def backward(self, x: torch.Tensor, gy: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                 a: torch.Tensor, b: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """The gradient of :meth:`forward`: ``a + b * x + gy * scale`` (``gy`` masked where the ReLU
        clamped, with ``relu``) in ``x``'s shape, format and dtype (``a``, ``b``: per channel)."""
        dim, wide = _channel_dim(x), torch.promote_types(x.dtype, torch.float32)
        per_channel = [v.to(wide) for v in (scale, shift, a, b)]
        gx = self._run("backward", _rows(x, dim), _rows(gy, dim), *per_channel, dim, relu=relu)
        return _unrows(gx, x, dim)

    def _use_compiled(self, x: torch.Tensor) -> bool:
        return (self.compiled and not _compiling_failed and x.device.type == "cpu" and x.dtype in _COMPILED_DTYPES
                and x[0].numel() >= MIN_IMAGE_ELEMENTS)

    def _run(self, direction: str, x: torch.Tensor, *args: Any, relu: bool) -> Any:
        if not self._use_compiled(x):
            return _EAGER[direction](x, *args, 0.0 if relu else None)
        # Compiled, the floor is always there (no ReLU: -inf), as a 0-d tensor, whose value dynamo
        # does not guard on: one loop serves layers with and without a ReLU, where a flag or a
        # float would compile one of each.
        floor = torch.tensor(0.0 if relu else -math.inf)
        if direction not in _compiled:
            # torch warns, on a machine without CUDA, that it found none: not news on a CPU run.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            _compiled[direction] = torch.compile(_EAGER[direction], dynamic=True)
        for t in (x, *args):
            if isinstance(t, torch.Tensor):
                # One loop for every shape: dynamo would otherwise compile a variant for a single
                # image (whose sums may add in another order than a batch's) and one for each
                # layer whose channel and pixel counts happen to be equal.
                for dim in range(t.ndim):
                    torch._dynamo.decorators.mark_unbacked(t, dim)
        t0 = time.perf_counter()
        try:
            # Autocast off: the loops state their dtypes, and a call under autocast (the forward)
            # and one outside it (the backward, a probe) would otherwise compile a variant each.
            with torch.autocast(x.device.type, enabled=False, cache_enabled=False):
                out = _compiled[direction](x, *args, floor)
        except Exception as exc:  # any compiler failure: the eager loop is the same math
            _compiling_failed.append(exc_reason(exc, 160))
            log.warning("compiling the fused BN kernels failed, running them eagerly (slower): %s. For the "
                        "compiled ones install a C++ compiler (g++ or clang++); TORCHDYNAMO_DISABLE=1 skips the "
                        "attempt", _compiling_failed[0])
            return _EAGER[direction](x, *args, 0.0 if relu else None)
        if (took := time.perf_counter() - t0) > _SLOW_COMPILE_S:
            log.info("compiled the fused BN kernels in %.0f s (inductor caches them for later runs)", took)
        if direction not in _checked:
            eager = _EAGER[direction](x, *args, 0.0 if relu else None)
            if not _agrees(out, eager):
                _compiling_failed.append(f"the compiled {direction} loop disagrees with the eager one")
                log.warning("the compiled BN kernels computed other values than the eager ones (%s), running them "
                            "eagerly (slower). A stale inductor cache, e.g. one shared by machines of other CPUs, "
                            "can do this: set TORCHINDUCTOR_CACHE_DIR to an empty folder, or TORCHDYNAMO_DISABLE=1",
                            _compiling_failed[0])
                return eager
            _checked.add(direction)
        self.ran_compiled = True
        return out
