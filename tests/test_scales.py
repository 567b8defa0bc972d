"""Coarse-to-fine generation: the stages, the default budget by input size, and runs across stages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generation import _Interrupt
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.errors import DGHError
from dgh_deploy.generation import DGHConfig, default_budget, make_calibration_set
from dgh_deploy.generation.budget import coarse_to_fine
from dgh_deploy.generation.engine import Generator
from dgh_deploy.generation.scales import FULL_SIZE_ONLY, Stage, parse_schedule, stages

LADDER = ((0.25, 0.7), (0.5, 0.2), (1.0, 0.1))


def test_stages_split_the_iterations_and_round_to_the_stride() -> None:
    assert stages((640, 640), 200, LADDER, 32) == [Stage((160, 160), 0, 140), Stage((320, 320), 140, 180),
                                                   Stage((640, 640), 180, 200)]
    # a letterboxed rectangle: each side its fraction, to a multiple of the stride
    assert [s.imgsz for s in stages((480, 640), 10, LADDER, 32)] == [(128, 160), (256, 320), (480, 640)]


def test_stages_merge_equal_sizes_and_drop_empty_ones() -> None:
    # 0.75 x 64 = 48 rounds to 64 at stride 32: one stage of all the iterations
    assert stages((64, 64), 10, ((0.75, 0.5), (1.0, 0.5)), 32) == [Stage((64, 64), 0, 10)]
    assert stages((64, 64), 0, LADDER) == [Stage((64, 64), 0, 0)]  # no iterations: the full size only
    assert stages((64, 64), 3, LADDER) == [Stage((16, 16), 0, 2), Stage((32, 32), 2, 3), Stage((64, 64), 3, 3)]


@pytest.mark.parametrize(("text", "message"), [
    ("0.5:1", "does not end at the full size"), ("0.5:1,0.25:1,1:1", "not coarse to fine"),
    ("0.5:0,1:1", "without iterations"), ("a:b", "not a list of FRACTION:SHARE"), ("0:0.5,1:0.5", "full size"),
])
def test_bad_schedules_are_refused(text: str, message: str) -> None:
    with pytest.raises(DGHError, match=message):
        parse_schedule(text)


def test_schedules_parse() -> None:
    assert parse_schedule("0.25:0.7,0.5:0.2,1:0.1") == LADDER
    assert parse_schedule("1") == FULL_SIZE_ONLY


def test_default_budget_follows_the_input_size() -> None:
    cifar = as_loaded(tiny_bn_net(), imgsz=(32, 32))
    assert (default_budget(cifar, "cpu").n_images, default_budget(cifar, "cpu").scales) == (256, FULL_SIZE_ONLY)
    det320 = replace(cifar, task="detect", imgsz=(320, 320))
    assert default_budget(det320, "cpu").scales == FULL_SIZE_ONLY  # the size the quality tables hold
    det640 = replace(det320, imgsz=(640, 640))
    budget = default_budget(det640, "cpu")
    assert (budget.n_images, budget.iters, budget.scales) == (64, 200, LADDER)
    assert "640 pixels" in budget.basis and "from 160" in budget.basis
    assert default_budget(det640, "cuda").scales == FULL_SIZE_ONLY  # a GPU affords the full size
    cls224 = replace(cifar, imgsz=(224, 224))
    assert (default_budget(cls224, "cpu").n_images, default_budget(cls224, "cpu").scales) == (
        128, ((0.5, 0.8), (1.0, 0.2)))
    assert coarse_to_fine(100, 112) == FULL_SIZE_ONLY  # no halving reaches a useful coarse size


def _ladder_config(**kw: object) -> DGHConfig:
    return replace(DGHConfig(scales=((0.5, 0.5), (1.0, 0.5))), **kw)


def test_a_coarse_to_fine_run_ends_at_the_full_size() -> None:
    model = as_loaded(tiny_bn_net(), imgsz=(32, 32))
    cs = make_calibration_set(model, "dgh", 6, 8, config=_ladder_config(), progress=False)
    assert cs.images.shape == (6, 3, 32, 32)
    assert cs.settings["stages"] == [[16, 16, 0, 4], [32, 32, 4, 8]]
    assert len(cs.stats["loss_curve"]) == 8
    assert len(cs.stats["stage_s"]) == 2 and all(t > 0 for t in cs.stats["stage_s"])
    # the coarse stage did the work: the BN loss is already far below the noise's at the switch
    curve = [c["bn"] for c in cs.stats["loss_curve"]]
    assert curve[4] < curve[0]
    with pytest.raises(DGHError, match="resume with the same"):  # another schedule is another recipe
        ckpt_mismatch(model)


def ckpt_mismatch(model: object) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "gen.ckpt"
        Generator(model, 6, 4, config=_ladder_config(checkpoint_every=2)).run(checkpoint=ckpt, progress=False)
        make_calibration_set(model, "dgh", 6, 4, config=DGHConfig(), checkpoint=ckpt, resume=True, progress=False)


@pytest.mark.parametrize("at", [4, 5, 6])  # the last coarse step, the first fine step, the one after
def test_resume_across_the_stages_gives_the_uninterrupted_images(tmp_path: Path, at: int) -> None:
    model = as_loaded(tiny_bn_net(), imgsz=(32, 32))
    cfg = _ladder_config(checkpoint_every=3, patience=1)
    full = make_calibration_set(model, "dgh", 6, 8, seed=3, config=cfg, progress=False)
    ckpt = tmp_path / "gen.ckpt"
    gen = Generator(model, 6, 8, seed=3, config=cfg)
    _Interrupt(gen, at=at)
    with pytest.raises(KeyboardInterrupt):
        gen.run(checkpoint=ckpt, resume=False, progress=False)
    state = torch.load(ckpt, weights_only=True)
    assert state["stage"] == (0 if at <= 4 else 1)
    resumed = make_calibration_set(model, "dgh", 6, 8, seed=3, config=cfg, checkpoint=ckpt, resume=True,
                                   progress=False)
    np.testing.assert_array_equal(resumed.images, full.images)
    assert resumed.stats["loss_curve"] == full.stats["loss_curve"]


def test_an_unknown_stage_learning_rate_is_refused() -> None:
    with pytest.raises(DGHError, match="unknown stage_lr 'warm'"):
        Generator(as_loaded(tiny_bn_net(), imgsz=(32, 32)), 4, 4, config=_ladder_config(stage_lr="warm"))


def test_a_stage_size_the_model_cannot_take_is_refused() -> None:
    fixed = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 32 * 32, 10))
    with pytest.raises(DGHError, match=r"coarse-to-fine stage size 16x16.*--scales 1"):
        Generator(as_loaded(fixed, imgsz=(32, 32)), 4, 4, config=_ladder_config())
