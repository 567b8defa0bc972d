"""The ``sim`` target: quantizer math, BN folding, range estimators, a real ResNet-20 build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.calibration.observers import Histogram, QuantGrid, estimate_range, mse_range
from dgh_deploy.errors import DGHError
from dgh_deploy.targets import TargetOptions, get_target
from dgh_deploy.targets.sim.fake_quant import fold_batchnorm


def test_w8_per_channel_error_bound() -> None:
    w = torch.randn(16, 27) * torch.logspace(-2, 1, 16)[:, None]  # channels of very different scales
    grid = QuantGrid(8, symmetric=True, narrow=True)
    scale, zero, qmin, qmax = (t[:, None] for t in grid.params(w.amin(1), w.amax(1)))
    q = grid.fake_quant(w, scale, zero, qmin, qmax)
    assert ((q - w).abs() <= scale / 2 + 1e-7).all()  # at most half a step, per channel
    assert torch.allclose(scale[:, 0], w.abs().amax(1) / 127)
    assert len(torch.unique(torch.round(q / scale))) <= 255  # narrow range: -127..127


def test_power_of_two_scales_are_powers_of_two() -> None:
    lo, hi = torch.tensor([-3.0, 0.0, -0.01]), torch.tensor([5.0, 6.3, 0.02])
    for symmetric in (True, False):
        scale, zero, _, _ = QuantGrid(8, symmetric, power_of_two=True).params(lo, hi)
        exponent = torch.log2(scale)
        assert torch.equal(exponent, torch.round(exponent))
        plain, _, _, _ = QuantGrid(8, symmetric).params(lo, hi)
        assert (scale >= plain).all() and (scale < 2 * plain).all()  # rounded up: the range stays covered
        assert torch.equal(zero, torch.round(zero))


def test_grids_represent_zero_and_use_unsigned_for_relu() -> None:
    grid = QuantGrid(4, symmetric=False)
    s, z, qmin, qmax = grid.params(torch.tensor(-1.3), torch.tensor(2.9))
    assert grid.fake_quant(torch.tensor(0.0), s, z, qmin, qmax) == 0.0
    assert (int(qmin), int(qmax)) == (0, 15)
    s, z, qmin, qmax = QuantGrid(4, symmetric=True).params(torch.tensor(0.0), torch.tensor(3.0))
    assert (int(qmin), int(qmax), int(z)) == (0, 15, 0) and float(s) == pytest.approx(0.2)


def test_range_estimators() -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(200_000), torch.tensor([40.0])])  # one outlier
    h = Histogram()
    h.observe_range(x)
    h.observe_counts(x)
    grid = QuantGrid(4, symmetric=False)
    assert estimate_range(h, "minmax", grid)[1] == pytest.approx(40.0)
    p_lo, p_hi = estimate_range(h, "percentile", grid, 99.9)
    assert p_hi == pytest.approx(float(torch.quantile(x[:100_000], 0.999)), rel=0.05)
    m_lo, m_hi = estimate_range(h, "mse", grid)
    assert 1.5 < m_hi < 6 and -6 < m_lo < -1.5  # clips the outlier, keeps the bulk

    def err(lo: float, hi: float) -> float:
        s, z, a, b = grid.params(torch.tensor(lo), torch.tensor(hi))
        return float(((grid.fake_quant(x, s, z, a, b) - x) ** 2).mean())

    assert err(m_lo, m_hi) < err(h.lo, h.hi) and err(m_lo, m_hi) < err(p_lo, p_hi)
    with pytest.raises(DGHError, match="unknown activation range"):
        estimate_range(h, "entropy", grid)


def test_weight_mse_beats_minmax_at_4_bits() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 300) ** 3  # heavy tails
    grid = QuantGrid(4, symmetric=True, narrow=True)
    lo, hi = mse_range(w, w.amin(1), w.amax(1), grid)

    def err(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        s, z, a, b = (t[:, None] for t in grid.params(lo, hi))
        return ((grid.fake_quant(w, s, z, a, b) - w) ** 2).sum(1)

    assert (err(lo, hi) <= err(w.amin(1), w.amax(1)) + 1e-9).all()


def test_fold_batchnorm_keeps_the_function() -> None:
    net = tiny_bn_net()
    folded, n_folded, n_bn = fold_batchnorm(net)
    assert (n_folded, n_bn) == (2, 2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)


SIM_SETTINGS = ("act_symmetric", "power_of_two", "weight_rounding", "bias_correction")  # the sim target's own


def _build(model: object, images: np.ndarray, tmp: Path, **options: object) -> object:
    target = get_target("sim", **{k: options.pop(k) for k in SIM_SETTINGS if k in options})
    target.options = TargetOptions(**options)  # type: ignore[arg-type]
    return target.build(model, CalibrationSet(images, "test"), tmp)  # type: ignore[arg-type]


def test_sim_build_tiny(tmp_path: Path) -> None:
    model = as_loaded(tiny_bn_net())
    images = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    res = _build(model, images, tmp_path, weight_bits=8, act_bits=8, power_of_two=True, act_symmetric=True)
    scales = json.loads(res.artifacts["model"].read_text())
    assert res.info.quantized_layers == 3 and res.info.bn_folded == 2
    assert res.info.quantized_tensors == 4  # 3 layer inputs + the output
    for a in scales["activations"].values():
        assert np.log2(a["scale"]) == round(np.log2(a["scale"])) and a["zero_point"] == 0
    ref = torch.from_numpy(images[:8])
    with torch.no_grad():
        f = model.module(ref).numpy()
    q = res.runner.infer(images[:8])[0]
    assert np.abs(q - f).max() < 0.1 * np.abs(f).max()  # W8A8 follows float closely
    assert not np.array_equal(q, f)  # but it is quantized
    assert res.info.output_headroom == 1.5  # a classifier's (ClassifyTask.output_headroom)
    minmax = _build(model, images, tmp_path, act_range="minmax")
    top = float(model.module(torch.from_numpy(images)).detach().max())  # ranges are read on the float model
    assert top > 0 and minmax.runner.module.out_quant[0].range[1] == pytest.approx(1.5 * top, rel=1e-5)
    with pytest.raises(DGHError, match="not supported by the sim target"):
        _build(model, images, tmp_path, act_range="entropy")
    with pytest.raises(DGHError, match="bits 1 not supported"):
        _build(model, images, tmp_path, weight_bits=1)


def test_sim_resnet20_real_weights(r20_weights: str, assets: Path, tmp_path: Path) -> None:
    """W8A8 and W4A8 on the real ResNet-20, calibrated on 64 real images, on 500 test images."""
    from dgh_deploy.generation import make_calibration_set
    from dgh_deploy.loading import load_model
    from dgh_deploy.runtime.base import TorchRunner
    from dgh_deploy.tasks import get_task

    model = load_model("cifar_resnet20", r20_weights)
    task, test = get_task("classify"), str(assets / "cifar10" / "test")
    calib = make_calibration_set(model, f"real:{assets / 'cifar10' / 'calib'}", 64, 0).images
    fl = task.evaluate(TorchRunner(model.module), model, test, 500)["top1"]
    w8 = _build(model, calib, tmp_path, weight_bits=8, act_bits=8)
    assert w8.timings["calibration"] < 30
    assert abs(task.evaluate(w8.runner, model, test, 500)["top1"] - fl) <= 2.0
    w4 = _build(model, calib, tmp_path, weight_bits=4, act_bits=8)
    assert fl - 15 < task.evaluate(w4.runner, model, test, 500)["top1"] < fl + 1  # 4-bit weights cost, not all


@pytest.mark.parametrize("groups", [1, 4])
def test_bias_correction_is_the_mean_shift_of_weight_rounding(groups: int) -> None:
    """With no padding and spatially flat inputs the per-channel input mean gives the exact mean output
    shift (a kernel then sees every channel's mean at each tap), grouped convs too."""
    from dgh_deploy.targets.sim.fake_quant import QuantLayer

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, groups=groups)
    x = (torch.randn(16, 8, 1, 1) + torch.linspace(-2, 3, 8).view(1, 8, 1, 1)).expand(16, 8, 10, 10)
    with torch.no_grad():
        want_float = conv(x)
    layer = QuantLayer(conv, "c", QuantGrid(3, True, narrow=True), QuantGrid(16, False), True, "minmax")
    layer.act.mode = "off"  # the input stays float: only the weights' rounding shifts the output
    layer.observe_mean = True
    with torch.no_grad():
        layer(x)
    layer.observe_mean = False
    layer.use_quant_weights(True)
    with torch.no_grad():
        shift_before = (layer(x) - want_float).mean((0, 2, 3))
        applied = layer.correct_bias()
        shift_after = (layer(x) - want_float).mean((0, 2, 3))
    assert applied is not None and shift_before.abs().max() > 0.05  # 3-bit weights do shift the mean
    torch.testing.assert_close(applied, shift_before, atol=1e-5, rtol=1e-4)
    assert shift_after.abs().max() < 1e-5


def test_bias_correction_option(tmp_path: Path) -> None:
    model = as_loaded(tiny_bn_net())
    rng = np.random.default_rng(0)
    images = (rng.standard_normal((32, 3, 16, 16)) + 1.5).astype(np.float32)  # a non-zero input mean
    on = _build(model, images, tmp_path, weight_bits=3, act_bits=8, weight_rounding="nearest")
    off = _build(model, images, tmp_path, weight_bits=3, act_bits=8, bias_correction=False, weight_rounding="nearest")
    assert on.info.bias_correction and not off.info.bias_correction
    with torch.no_grad():
        f = model.module(torch.from_numpy(images)).numpy()
    err_on = abs((on.runner.infer(images)[0] - f).mean())
    err_off = abs((off.runner.infer(images)[0] - f).mean())
    assert err_on < err_off


@pytest.mark.parametrize("layer", [torch.nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=1),
                                   torch.nn.Conv2d(6, 10, (3, 1), padding=(2, 0), dilation=(2, 1)),
                                   torch.nn.Linear(24, 10)], ids=["conv", "conv-dilated", "linear"])
def test_gptq_lowers_the_output_error_on_the_grid(layer: torch.nn.Module) -> None:
    """GPTQ's weights sit on the same grid as round-to-nearest's and give a smaller output error on
    the inputs it saw; its input moment is laid out like the weight's columns (checked through the
    identity ||(W_q - W) X||^2 = tr(D H D^T))."""
    from dgh_deploy.calibration.weights.gptq import InputMoment, gptq_round

    torch.manual_seed(0)
    mix = torch.randn(6, 6) if isinstance(layer, torch.nn.Conv2d) else torch.randn(24, 24)
    if isinstance(layer, torch.nn.Conv2d):  # correlated channels, as real feature maps have
        x = torch.einsum("nchw,cd->ndhw", torch.randn(32, 6, 12, 12), mix) + 0.5
    else:
        x = torch.randn(256, 24) @ mix + 0.5
    w = layer.weight.detach()
    grid = QuantGrid(4, True, narrow=True)
    rows = w.reshape(w.shape[0], -1)
    params = tuple(t.reshape(-1, 1) for t in grid.params(rows.amin(1), rows.amax(1)))
    nearest = grid.fake_quant(rows, *params).reshape(w.shape)
    moment = InputMoment()
    moment.add(layer, x)
    gptq = gptq_round(w, moment, lambda cols: grid.fake_quant(cols, *(p.double() for p in params)))

    def out_err(wq: torch.Tensor) -> float:
        fn = torch.nn.functional
        d = wq - w
        y = fn.linear(x, d) if isinstance(layer, torch.nn.Linear) else fn.conv2d(
            x, d, None, layer.stride, layer.padding, layer.dilation)
        return float((y.double() ** 2).sum())

    d = (gptq - w).reshape(w.shape[0], -1).double()
    assert out_err(gptq) == pytest.approx(float(torch.trace(d @ moment.h @ d.T)), rel=1e-4)
    assert out_err(gptq) < 0.8 * out_err(nearest)
    codes = gptq.reshape(w.shape[0], -1) / params[0]
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # on the grid
    assert (codes.round() >= params[2]).all() and (codes.round() <= params[3]).all()


def test_weight_rounding_option(tmp_path: Path) -> None:
    model = as_loaded(tiny_bn_net())
    images = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    common = dict(weight_bits=3, act_bits=16, bias_correction=False)  # weight rounding dominates the error
    gptq = _build(model, images, tmp_path, **common)  # the default below 8 bits
    nearest = _build(model, images, tmp_path, **common, weight_rounding="nearest")
    assert gptq.info.weight_rounding == "gptq" and nearest.info.weight_rounding == "nearest"
    with torch.no_grad():
        f = model.module(torch.from_numpy(images)).numpy()
    err = {k: float(((r.runner.infer(images)[0] - f) ** 2).mean()) for k, r in (("g", gptq), ("n", nearest))}
    assert err["g"] < err["n"]  # on the images it was rounded for
    assert _build(model, images, tmp_path, weight_bits=8, act_bits=8).info.weight_rounding == "nearest"
    with pytest.raises(DGHError, match="weight rounding 'adaround' not supported"):
        _build(model, images, tmp_path, weight_rounding="adaround")
