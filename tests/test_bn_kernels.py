"""The compiled BN kernels: the eager arithmetic's values, an image's sums whatever its chunk, the
eager loop when compiling fails; ReLUs folded into them only where a BN layer feeds nothing else."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from dgh_deploy.generation import DGHConfig, bn_kernels
from dgh_deploy.generation.activation_fusion import fuse_relus
from dgh_deploy.generation.bn_kernels import FusedKernels
from dgh_deploy.generation.engine import Generator
from dgh_deploy.generation.stats import BNInputRecorder, StatsBatchNorm
from dgh_deploy.loading import load_model

LAYOUTS = (torch.contiguous_format, torch.channels_last)


def _batch(dtype: torch.dtype, layout: torch.memory_format, n: int = 6, c: int = 16, hw: int = 24) -> torch.Tensor:
    torch.manual_seed(0)
    return (3.0 + torch.randn(n, c, hw, hw)).to(dtype).contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.usefixtures("cxx")
def test_compiled_kernels_compute_the_eager_values(dtype: torch.dtype, layout: torch.memory_format,
                                                   relu: bool) -> None:
    x, scale, shift = _batch(dtype, layout), torch.rand(16) + 0.5, -3.0 + torch.randn(16)  # about half clamped
    gy = torch.randn(x.shape).to(dtype).contiguous(memory_format=layout)
    a, b = torch.randn(16), torch.randn(16) * 1e-2
    compiled, eager = FusedKernels(True), FusedKernels(False)
    y1, s1, q1 = compiled.forward(x, scale, shift, relu)
    y0, s0, q0 = eager.forward(x, scale, shift, relu)
    assert compiled.ran_compiled and not eager.ran_compiled
    assert y1.dtype == dtype and y1.is_contiguous(memory_format=layout)
    assert s1.shape == (6, 16) and s1.dtype == torch.float32
    ulp = 2**-7 if dtype == torch.bfloat16 else 1e-6  # one rounding of the output, either way
    torch.testing.assert_close(y1.float(), y0.float(), rtol=ulp, atol=ulp)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(q1, q0, rtol=1e-5, atol=1e-3)
    z = (x.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1))
    torch.testing.assert_close(y1.double(), z.clamp_min(0) if relu else z, rtol=ulp, atol=ulp * 4)
    torch.testing.assert_close(s1.double(), x.double().sum((2, 3)), rtol=1e-5, atol=1e-3)

    g1, g0 = compiled.backward(x, gy, scale, shift, a, b, relu), eager.backward(x, gy, scale, shift, a, b, relu)
    assert g1.dtype == dtype and g1.is_contiguous(memory_format=layout)
    torch.testing.assert_close(g1.float(), g0.float(), rtol=ulp, atol=ulp)
    view = (1, -1, 1, 1)
    passed = gy.float() * (z > 0) if relu else gy.float()
    want = a.view(view) + b.view(view) * x.float() + passed * scale.view(view)
    torch.testing.assert_close(g1.float(), want, rtol=ulp, atol=ulp * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.usefixtures("cxx")
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


def test_a_compiled_loop_computing_other_values_falls_back_to_the_eager_loop(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A stale inductor cache once gave NaN loops: the first compiled call is checked against eager."""
    def stale(fn: object, **_kw: object) -> object:
        def run(*a: object) -> object:
            y, s, q = fn(*a)  # type: ignore[operator]
            return y, s, torch.full_like(q, float("nan"))
        return run

    monkeypatch.setattr(torch, "compile", stale)
    monkeypatch.setattr(bn_kernels, "_compiled", {})
    monkeypatch.setattr(bn_kernels, "_compiling_failed", [])
    monkeypatch.setattr(bn_kernels, "_checked", set())
    x, scale, shift = _batch(torch.float32, torch.channels_last), torch.rand(16), torch.rand(16)
    with caplog.at_level(logging.WARNING, logger="dgh_deploy"):
        kernels = FusedKernels(True)
        y, s, q = kernels.forward(x, scale, shift)
        kernels.forward(x, scale, shift)
    y0, s0, q0 = FusedKernels(False).forward(x, scale, shift)
    assert torch.equal(y, y0) and torch.equal(s, s0) and torch.equal(q, q0)
    assert not kernels.ran_compiled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "other values than the eager" in warnings[0] and "TORCHINDUCTOR_CACHE_DIR" in \
        warnings[0]


@pytest.mark.usefixtures("cxx")
def test_a_generation_step_is_the_same_compiled_or_eager() -> None:
    """ResNet-20's loss and gradient with the compiled kernels and its ReLUs folded in, against the
    eager ones (fp32: the sums add in another order, nothing else differs)."""
    model = load_model("demo")
    results = {}
    for compiled in (True, False):
        gen = Generator(model, 8, 2, seed=1, config=DGHConfig(precision="fp32", compiled_kernels=compiled))
        x = gen.initial_images().requires_grad_(True)
        bn, out = gen.compute_grads(x, iteration=1)
        results[compiled] = (bn, out, x.grad.clone(), gen.kernels.ran_compiled)
        if compiled:
            assert gen.fused_relus == 10  # the stem's and each block's first BN: the second feeds the residual sum
    (bn1, out1, g1, ran1), (bn0, out0, g0, ran0) = results[True], results[False]
    assert ran1 and not ran0
    assert gen.fused_relus == 0  # the eager run keeps the model's own ReLUs
    assert bn1 == pytest.approx(bn0, rel=1e-5) and out1 == pytest.approx(out0, rel=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-4 * g0.abs().max().item())


class _Net(nn.Module):
    """Each way a ReLU follows a BN layer, and the cases that must not fuse: a BN layer read twice,
    a layer called twice, a ReLU module shared with a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_module, self.bn_function, self.bn_method = nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.bn_read_twice, self.bn_called_twice = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        for bn in (self.bn_module, self.bn_function, self.bn_method, self.bn_read_twice, self.bn_called_twice):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn_module(self.conv(x)))
        x = F.relu(self.bn_function(x - 0.5))
        x = self.bn_method(x - 0.5).relu()
        y = self.bn_read_twice(x - 0.5)
        x = torch.relu(y) + y
        x = self.relu(self.bn_called_twice(x) + x)
        return F.relu(self.bn_called_twice(x - 0.5)).mean((2, 3))


def test_relus_fold_only_where_the_bn_layer_feeds_nothing_else() -> None:
    net = _Net().eval()
    plain = BNInputRecorder(net_copy := _copy(net))
    fusing = BNInputRecorder(net)
    fused, count = fuse_relus(net)
    assert count == 3 and isinstance(fused, fx.GraphModule)
    assert {name for name, m in fused.named_modules() if isinstance(m, StatsBatchNorm) and m.relu} == {
        "bn_module", "bn_function", "bn_method"}
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    outs, grads, sums = [], [], []
    for model, recorder in ((net_copy, plain), (fused, fusing)):
        recorder.start(x)
        out = model(x)
        stats = recorder.take(recorder.names)
        (out.sum() + sum(q.sum() for q in stats.sumsq) * 1e-3).backward()
        outs.append(out.detach())
        grads.append(x.grad.clone())
        sums.append(torch.stack([s.sum() for s in stats.sum]))
        x.grad = None
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(sums[1], sums[0])
    torch.testing.assert_close(grads[1], grads[0])


def _copy(net: nn.Module) -> nn.Module:
    clone = _Net().eval()
    clone.load_state_dict(net.state_dict())
    return clone


def test_a_model_fx_cannot_trace_keeps_its_relus() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.bn(x)) if x.sum() > 0 else x  # control flow on a value: untraceable

    net = Dynamic().eval()
    BNInputRecorder(net)
    assert fuse_relus(net) == (net, 0)


@pytest.mark.usefixtures("cxx")
def test_one_compiled_loop_serves_every_shape_relu_and_autocast_state() -> None:
    """A compile costs seconds: image counts (one included), channel and pixel counts (equal ones
    included), layers with and without a ReLU, and calls inside and outside autocast share one
    loop per direction and dtype."""
    from torch._dynamo.utils import counters

    kernels = FusedKernels(True)
    before = counters["stats"]["unique_graphs"]
    for n, c, hw, relu in ((3, 16, 16, False), (1, 16, 16, True), (2, 64, 8, True), (5, 32, 12, False)):
        x = _batch(torch.float32, torch.channels_last, n=n, c=c, hw=hw)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=relu):
            kernels.forward(x, torch.rand(c), torch.rand(c), relu)
    assert kernels.ran_compiled
    assert counters["stats"]["unique_graphs"] - before <= 1  # none where an earlier test compiled it
