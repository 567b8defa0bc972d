"""The compiled BN kernels: the eager arithmetic's values, an image's sums whatever its chunk, and
the eager loop when compiling fails."""

from __future__ import annotations

import logging

import pytest
import torch

from dgh_deploy.generation import DGHConfig, bn_kernels
from dgh_deploy.generation.bn_kernels import FusedKernels
from dgh_deploy.generation.engine import Generator
from dgh_deploy.loading import load_model

LAYOUTS = (torch.contiguous_format, torch.channels_last)


def _batch(dtype: torch.dtype, layout: torch.memory_format, n: int = 6, c: int = 16, hw: int = 24) -> torch.Tensor:
    torch.manual_seed(0)
    return (3.0 + torch.randn(n, c, hw, hw)).to(dtype).contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compiled_kernels_compute_the_eager_values(dtype: torch.dtype, layout: torch.memory_format) -> None:
    x, scale, shift = _batch(dtype, layout), torch.rand(16) + 0.5, torch.randn(16)
    gy = torch.randn(x.shape).to(dtype).contiguous(memory_format=layout)
    a, b = torch.randn(16), torch.randn(16) * 1e-2
    compiled, eager = FusedKernels(True), FusedKernels(False)
    y1, s1, q1 = compiled.forward(x, scale, shift)
    y0, s0, q0 = eager.forward(x, scale, shift)
    assert compiled.ran_compiled and not eager.ran_compiled
    assert y1.dtype == dtype and y1.is_contiguous(memory_format=layout)
    assert s1.shape == (6, 16) and s1.dtype == torch.float32
    ulp = 2**-7 if dtype == torch.bfloat16 else 1e-6  # one rounding of the output, either way
    torch.testing.assert_close(y1.float(), y0.float(), rtol=ulp, atol=ulp)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(q1, q0, rtol=1e-5, atol=1e-3)
    ref = (x.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1))
    torch.testing.assert_close(y1.double(), ref, rtol=ulp, atol=ulp * 4)
    torch.testing.assert_close(s1.double(), x.double().sum((2, 3)), rtol=1e-5, atol=1e-3)

    g1, g0 = compiled.backward(x, gy, scale, a, b), eager.backward(x, gy, scale, a, b)
    assert g1.dtype == dtype and g1.is_contiguous(memory_format=layout)
    torch.testing.assert_close(g1.float(), g0.float(), rtol=ulp, atol=ulp)
    view = (1, -1, 1, 1)
    want = a.view(view) + b.view(view) * x.float() + gy.float() * scale.view(view)
    torch.testing.assert_close(g1.float(), want, rtol=ulp, atol=ulp * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_images_sums_do_not_depend_on_its_chunk(dtype: torch.dtype) -> None:
    """Chunks, the two-pass path and torchrun shards cut the same set differently: each image's
    sums must be the same bits whatever the chunk (one image included: no compiled variant of its own)."""
    x, scale, shift = _batch(dtype, torch.channels_last, n=9), torch.rand(16), torch.rand(16)
    kernels = FusedKernels(True)
    _, s, q = kernels.forward(x, scale, shift)
    for lo, hi in ((0, 1), (1, 4), (4, 9), (8, 9)):
        _, sp, qp = kernels.forward(x[lo:hi], scale, shift)
        assert torch.equal(sp, s[lo:hi]) and torch.equal(qp, q[lo:hi]), (lo, hi)


def test_small_images_run_eagerly() -> None:
    x = _batch(torch.float32, torch.channels_last, c=4, hw=8)  # 256 elements an image
    kernels = FusedKernels(True)
    kernels.forward(x, torch.ones(4), torch.zeros(4))
    assert x[0].numel() < bn_kernels.MIN_IMAGE_ELEMENTS and not kernels.ran_compiled


def test_a_failing_compiler_falls_back_to_the_eager_loop(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    def broken(_fn: object, **_kw: object) -> object:
        def run(*_a: object) -> None:
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(bn_kernels, "_compiled", {})
    monkeypatch.setattr(bn_kernels, "_compiling_failed", [])
    x, scale, shift = _batch(torch.float32, torch.channels_last), torch.rand(16), torch.rand(16)
    with caplog.at_level(logging.WARNING, logger="dgh_deploy"):
        y, s, q = FusedKernels(True).forward(x, scale, shift)
        later = FusedKernels(True)
        later.forward(x, scale, shift)
    y0, s0, q0 = FusedKernels(False).forward(x, scale, shift)
    assert torch.equal(y, y0) and torch.equal(s, s0) and torch.equal(q, q0)
    assert not later.ran_compiled  # the process does not try again
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running them eagerly" in warnings[0] and "C++ compiler" in warnings[0]


def test_a_generation_step_is_the_same_compiled_or_eager() -> None:
    """ResNet-20's loss and gradient with the compiled kernels against the eager ones (fp32: the
    sums add in another order, nothing else differs); the run's statistics say which ran."""
    model = load_model("demo")
    results = {}
    for compiled in (True, False):
        gen = Generator(model, 8, 2, seed=1, config=DGHConfig(precision="fp32", compiled_kernels=compiled))
        x = gen.initial_images().requires_grad_(True)
        bn, out = gen.compute_grads(x, iteration=1)
        results[compiled] = (bn, out, x.grad.clone(), gen.kernels.ran_compiled)
    (bn1, out1, g1, ran1), (bn0, out0, g0, ran0) = results[True], results[False]
    assert ran1 and not ran0
    assert bn1 == pytest.approx(bn0, rel=1e-5) and out1 == pytest.approx(out0, rel=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-4 * g0.abs().max().item())
