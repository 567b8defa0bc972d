"""Baseline calibration sets: noise, BNS (ZeroQ-style) and real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.errors import DGHError
from dgh_deploy.generation import make_calibration_set


def _in_pixel_range(model: object, x: np.ndarray) -> bool:
    lo, hi = model.preprocessing.pixel_range()  # type: ignore[attr-defined]
    return bool((x >= lo.reshape(1, 3, 1, 1) - 1e-6).all() and (x <= hi.reshape(1, 3, 1, 1) + 1e-6).all())


def test_noise_shape_range_and_seed() -> None:
    model = as_loaded(tiny_bn_net())
    a = make_calibration_set(model, "noise", 6, 0, seed=1)
    assert a.images.shape == (6, 3, 16, 16) and a.images.dtype == np.float32 and a.source == "noise"
    assert _in_pixel_range(model, a.images)
    assert a.images.std() > 0.5  # Gaussian, not a constant
    assert np.array_equal(a.images, make_calibration_set(model, "noise", 6, 0, seed=1).images)
    assert not np.array_equal(a.images, make_calibration_set(model, "noise", 6, 0, seed=2).images)


def test_bns_is_plain_bn_matching() -> None:
    model = as_loaded(tiny_bn_net())
    cs = make_calibration_set(model, "bns", 8, 40, progress=False)
    assert cs.images.shape == (8, 3, 16, 16) and _in_pixel_range(model, cs.images)
    s = cs.settings
    assert (s["pipeline"], s["joint_stats"], s["output_loss_multiplier"], s["optimizer"]) == (False, False, 0.0, "adam")
    curve = cs.stats["loss_curve"]
    assert curve[-1]["bn"] < 0.5 * curve[0]["bn"]


def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{i:03d}.png")


def test_real_images_spread_over_classes(tmp_path: Path) -> None:
    _image_folder(tmp_path, {"a": 5, "b": 5, "c": 5})
    (tmp_path / "notes.txt").write_text("not an image")
    model = as_loaded(tiny_bn_net())
    cs = make_calibration_set(model, f"real:{tmp_path}", 6, 0)
    assert cs.images.shape == (6, 3, 16, 16) and _in_pixel_range(model, cs.images)
    classes = {f.split("/")[0] for f in cs.settings["files"]}
    assert classes == {"a", "b", "c"}
    expected = model.preprocessing.load(str(tmp_path / cs.settings["files"][0]), model.imgsz)
    np.testing.assert_array_equal(cs.images[0], expected)


def test_real_images_errors(tmp_path: Path) -> None:
    model = as_loaded(tiny_bn_net())
    with pytest.raises(DGHError, match="not found"):
        make_calibration_set(model, f"real:{tmp_path / 'missing'}", 4, 0)
    _image_folder(tmp_path / "few", {"x": 3})
    with pytest.raises(DGHError, match=r"holds 3 images.*fewer than the 4"):
        make_calibration_set(model, f"real:{tmp_path / 'few'}", 4, 0)
