"""Generation precision: bf16 autocast only where the hardware has it, resolved before hashing,
statistics in float64 whatever the activations' dtype."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generation_models import as_loaded, tiny_bn_net
from torch import nn

from dgh_deploy import __version__
from dgh_deploy.calibration import cache
from dgh_deploy.errors import DGHError
from dgh_deploy.generation import DGHConfig, job_recipe, make_calibration_set, precision
from dgh_deploy.generation.engine import Generator
from dgh_deploy.generation.stats import BNInputRecorder, channel_sums


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This CPU has native bf16 (mocked: the tests run alike on a CPU without it; there torch
    emulates bf16, slower but with the same numbers)."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    yield


@pytest.fixture
def no_cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    yield


def test_auto_is_fp32_and_bf16_refused_without_native_bf16(no_cpu_bf16: None) -> None:
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(DGHError, match="no native bfloat16") as err:
        precision.resolve_precision("bf16", "cpu")
    assert "\n" not in str(err.value) and "--precision fp32" in str(err.value)
    with pytest.raises(DGHError, match="no native bfloat16"):
        Generator(as_loaded(tiny_bn_net()), 4, 1, config=replace(DGHConfig(), precision="bf16"))
    assert Generator(as_loaded(tiny_bn_net()), 4, 1, config=replace(DGHConfig(), precision="auto")).settings[
        "precision"] == "fp32"


def test_auto_is_bf16_with_native_bf16(cpu_bf16: None) -> None:
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(DGHError, match="unknown precision 'fp16'"):
        precision.resolve_precision("fp16", "cpu")


def test_auto_keeps_fp32_for_depthwise_convolutions_on_a_cpu(cpu_bf16: None) -> None:
    """A model with grouped (depthwise) convolutions generates no faster in bf16 on a CPU (oneDNN's bf16
    depthwise kernels are memory-bound): auto gives it fp32, in the job's recipe and in the Generator
    alike; bf16 asked for by name still runs; a dense model gets bf16."""
    depthwise = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    assert precision.resolve_precision("auto", "cpu", depthwise) == "fp32"
    assert precision.resolve_precision("bf16", "cpu", depthwise) == "bf16"
    assert precision.resolve_precision("auto", "cpu", tiny_bn_net()) == "bf16"
    assert job_recipe("dgh", None, "cpu", module=depthwise).precision == "fp32"
    assert job_recipe("dgh", None, "cpu", module=tiny_bn_net()).precision == "bf16"
    assert Generator(as_loaded(depthwise), 4, 1).settings["precision"] == "fp32"


@pytest.mark.parametrize(("caps", "native"), [
    ({"avx512_f": True, "avx512_bw": True, "avx512_bf16": False}, False),  # AVX-512 alone: oneDNN would emulate
    ({"avx512_f": True, "avx512_bf16": True}, True),  # Zen 4, Cooper Lake
    ({"amx_bf16": True, "amx_tile": True}, True),  # Sapphire Rapids
    ({"neon": True, "bf16": True}, True),  # Arm FEAT_BF16 (Graviton 3, Apple M2)
    ({"neon": True}, False),
])
def test_cpu_bf16_detection(monkeypatch: pytest.MonkeyPatch, caps: dict[str, bool], native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    precision.cpu_has_bf16.cache_clear()
    try:
        assert precision.cpu_has_bf16() is native
    finally:
        precision.cpu_has_bf16.cache_clear()


@pytest.mark.parametrize(("cap", "native"), [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                            ("AVX512_CORE_AMX", True), ("", True)])
def test_a_onednn_cap_below_bf16_means_no_native_bf16(monkeypatch: pytest.MonkeyPatch, cap: str, native: bool) -> None:
    """ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16 makes oneDNN emulate bf16 on any CPU: auto must keep fp32."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": True}, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    precision.cpu_has_bf16.cache_clear()
    try:
        assert precision.cpu_has_bf16() is native
        assert precision.resolve_precision("auto", "cpu", tiny_bn_net()) == ("bf16" if native else "fp32")
    finally:
        precision.cpu_has_bf16.cache_clear()


def test_cache_key_has_the_resolved_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 and bf16 sets have different keys; auto is resolved before hashing, so its key is the
    key of what ran (bf16 with native bf16, fp32 without), never one of its own."""
    model = as_loaded(tiny_bn_net())

    def key(prec: str | None) -> str:
        recipe = job_recipe("dgh", prec, "cpu")
        assert recipe.precision in ("fp32", "bf16")
        return cache.cache_key(model, "dgh", 8, 10, 0, "cpu", version=__version__, recipe=recipe.hashed_settings())

    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda native=native: native)
        fp32 = key("fp32")
        assert key("auto") == (key("bf16") if native else fp32)
        assert key(None) == key(DGHConfig().precision) == key("auto")  # no choice: auto, resolved
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert key("bf16") != key("fp32")
    assert job_recipe("bns", "bf16", "cpu").precision == "bf16"  # the baseline's recipe takes it too


def test_statistics_stay_float64_under_bf16_autocast() -> None:
    """Under autocast the BN inputs are bf16; their sums are float64 (per image in float32, then
    float64), equal to the float64 sums of those very bf16 values, and so is the model input's."""
    net = tiny_bn_net()
    recorder = BNInputRecorder(net)
    seen: dict[str, torch.Tensor] = {}
    for name, _ in recorder.layers:  # the recorder's own layers, which replaced the model's BN layers
        net.get_submodule(name).register_forward_pre_hook(lambda _m, i, n=name: seen.__setitem__(n, i[0].detach()))
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    recorder.start(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    sums = recorder.take(recorder.names)
    assert {a.dtype for a in seen.values()} == {torch.bfloat16}  # autocast was on
    assert {t.dtype for t in [*sums.sum, *sums.sumsq]} == {torch.float64}
    for name, s, q in zip(sums.names[1:], sums.sum[1:], sums.sumsq[1:], strict=True):
        act = seen[name].double()
        torch.testing.assert_close(s, act.sum((0, 2, 3)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(q, (act * act).sum((0, 2, 3)), rtol=1e-6, atol=1e-6)
    (out.float().sum() + sum(v.sum() for v in sums.sumsq)).backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_statistics_gradient_of_bf16_activations_is_float32_accurate() -> None:
    """The gradient of the sums ``gs + 2 gq x`` nearly cancels for a channel whose mean is far
    from zero beside its spread: it is computed in float32 and rounded once, so it carries bf16's
    own rounding (2^-9 relative), not 2^-9 of the mean."""
    torch.manual_seed(0)
    x = (40.0 + torch.randn(4, 3, 8, 8)).bfloat16().requires_grad_(True)  # mean 40, std 1
    count, s, q = channel_sums(x)
    mean = s / count
    var = q / count - mean * mean  # the variance's gradient: 2 (x - mean) / count
    var.sum().backward()
    xd = x.detach().double()
    exact = 2 * (xd - xd.mean((0, 2, 3), keepdim=True)) / count
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    err = (x.grad.double() - exact).abs().max() / exact.abs().max()
    assert err < 2**-7, float(err)  # bf16 coefficients give about 40 * 2^-9 / 3 = 2.6e-2


def test_bf16_generation_is_close_to_fp32_at_the_first_iteration(cpu_bf16: None) -> None:
    """A tiny bf16 run: the model runs under autocast, the images stay float32 and finite, within
    bf16 rounding of the fp32 images after one step, and the settings record the precision."""
    model = as_loaded(tiny_bn_net())
    sets = {p: make_calibration_set(model, "dgh", 8, 1, seed=2, config=replace(DGHConfig(), precision=p),
                                    progress=False) for p in ("fp32", "bf16")}
    fp32, bf16 = sets["fp32"], sets["bf16"]
    assert bf16.settings["precision"] == "bf16" and fp32.settings["precision"] == "fp32"
    assert bf16.images.dtype == np.float32 and np.isfinite(bf16.images).all()
    assert not np.array_equal(bf16.images, fp32.images)  # bf16 did run
    np.testing.assert_allclose(bf16.images, fp32.images, rtol=0, atol=1e-3 * np.abs(fp32.images).max())
    assert bf16.stats["final_losses"]["bn"] == pytest.approx(fp32.stats["final_losses"]["bn"], rel=1e-2)


def test_bf16_run_autocasts_the_model_only(cpu_bf16: None) -> None:
    """Convolutions see bf16; the images, their gradient and the optimiser state stay float32."""
    gen = Generator(as_loaded(tiny_bn_net()), 8, 3, seed=1, config=replace(DGHConfig(), precision="bf16"))
    conv_inputs: list[torch.dtype] = []
    conv = next(m for m in gen.module.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: conv_inputs.append(out.dtype))
    x = gen.initial_images().requires_grad_(True)
    bn, _ = gen.compute_grads(x, iteration=0)
    assert conv_inputs == [torch.bfloat16]
    assert x.grad is not None and x.grad.dtype == torch.float32 and np.isfinite(bn)


def test_a_float64_generator_ignores_autocast(cpu_bf16: None) -> None:
    """Autocast lowers float32 only: a float64 run (the exactness tests') records fp32 under auto."""
    gen = Generator(as_loaded(tiny_bn_net().double()), 4, 1, config=replace(DGHConfig(), precision="auto"),
                    dtype=torch.float64)
    assert gen.settings["precision"] == "fp32"


def test_cli_precision_reaches_the_job(no_cpu_bf16: None) -> None:
    """``--precision`` on both commands; bf16 without native bf16 is refused before the model loads."""
    from dgh_deploy.api import generate
    from dgh_deploy.cli import build_parser

    for command in ("deploy", "generate"):
        extra = ["--out", "x.npz"] if command == "generate" else []
        args = build_parser(command).parse_args(["--precision", "auto", *extra])
        assert args.precision == "auto"
        assert build_parser(command).parse_args(extra).precision is None
    with pytest.raises(DGHError, match="no native bfloat16"):
        generate(model="no-such-model", precision="bf16")


def _job(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from dgh_deploy.cli import main

    code = main(["--target", "sim", "--calib", "dgh", "--n-images", "8", "--iters", "2", "--holdout", "0",
                 "--no-human-report", "--quiet", *args])
    return code, capsys.readouterr().err


def test_job_records_the_resolved_precision_and_caches_by_it(cpu_bf16: None, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """report.json shows what ran (auto -> bf16 here), and the cache keeps fp32 and bf16 sets apart
    (the key of an auto job is the resolved one: test_cache_key_has_the_resolved_precision)."""
    cache_dir = tmp_path / "cache"
    for prec in ("auto", "fp32"):
        out = tmp_path / prec
        code, err = _job(["--precision", prec, "--cache-dir", str(cache_dir), "--out", str(out)], capsys)
        assert code == 0, err
        calib = json.loads((out / "report.json").read_text())["calibration"]
        assert calib["settings"]["precision"] == ("bf16" if prec == "auto" else "fp32")
        assert calib["cached"] is False  # the bf16 set is no hit for fp32
    assert len(list(cache_dir.glob("*.npz"))) == 2


def test_job_refuses_bf16_before_loading(no_cpu_bf16: None, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _job(["--precision", "bf16", "--model", "no_such_model", "--out", str(tmp_path / "job")], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dgh-deploy:")]
    assert len(lines) == 1 and "no native bfloat16" in lines[0] and "Traceback" not in err
