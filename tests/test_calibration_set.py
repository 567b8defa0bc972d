"""The calibration-set file format and atomic artifact writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dgh_deploy.artifacts import staging_dir, write_json
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError


def test_round_trip(tmp_path: Path) -> None:
    images = np.random.default_rng(0).normal(size=(5, 3, 8, 6)).astype(np.float32)
    cs = CalibrationSet(images, "dgh", {"iters": 3, "lr": 16.0}, {"time_s": 1.5})
    cs.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as z:  # the documented layout, readable without dgh_deploy
        assert z["images"].dtype == np.float32 and z["images"].shape == (5, 3, 8, 6)
        meta = json.loads(str(z["metadata"]))
    assert meta["source"] == "dgh" and meta["settings"]["iters"] == 3
    back = CalibrationSet.load(tmp_path / "c.npz")
    assert np.array_equal(back.images, images) and back.settings == cs.settings and back.imgsz == (8, 6)


def test_layouts_and_split() -> None:
    cs = CalibrationSet(np.zeros((10, 3, 4, 4), np.float32), "noise")
    nhwc = list(cs.batches(4, "NHWC"))
    assert [b.shape for b in nhwc] == [(4, 4, 4, 3), (4, 4, 4, 3), (2, 4, 4, 3)]
    calib, held = cs.split(3)
    assert len(calib) == 7 and held is not None and len(held) == 3
    assert cs.split(0)[1] is None


@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (3, 8, 8), (0, 3, 8, 8)])
def test_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(DGHError, match="not N x 3 x H x W"):
        CalibrationSet(np.zeros(shape, np.float32), "file")


def test_wrong_size_for_model() -> None:
    cs = CalibrationSet(np.zeros((2, 3, 16, 16), np.float32), "file")
    with pytest.raises(DGHError, match="16x16 but the model takes 32x32"):
        cs.check_fits((32, 32))


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(DGHError, match="cannot read calibration file"):
        CalibrationSet.load(bad)
    with pytest.raises(DGHError, match="not found"):
        CalibrationSet.load(tmp_path / "missing.npz")


def test_staging_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staging_dir(out) as stage:
        write_json(stage / "report.json", {"a": 1})
        raise RuntimeError("conversion failed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no stray staging folder either
    with staging_dir(out) as stage:
        write_json(stage / "report.json", {"a": 2})
    assert json.loads((out / "report.json").read_text()) == {"a": 2}


def test_cache_key_follows_the_generation_recipe() -> None:
    """A changed default recipe (here the input prior) must miss the cache, not reuse old images."""
    from dataclasses import replace

    from test_generation_models import as_loaded, tiny_bn_net

    from dgh_deploy import __version__
    from dgh_deploy.calibration import cache
    from dgh_deploy.generation.config import default_recipe

    model = as_loaded(tiny_bn_net())

    def key(source: str, seed: int = 0, prior: str | None = None) -> str:
        recipe = default_recipe(source) if prior is None else replace(default_recipe(source), input_prior=prior)
        return cache.cache_key(model, source, 8, 10, seed, "cpu", version=__version__,
                               recipe=recipe.hashed_settings())

    before = {s: key(s) for s in ("dgh", "bns", "noise")}
    after = {s: key(s, prior="natural") for s in ("dgh", "bns", "noise")}
    assert after["dgh"] != before["dgh"] and after["bns"] != before["bns"]
    assert after["noise"] == before["noise"]  # not generated: no recipe
    assert key("dgh", seed=1) != before["dgh"]
