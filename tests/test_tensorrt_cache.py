"""TensorRT's calibration-cache format, and the calibrator's TensorRT-only paths (tensorrt absent or faked)."""

from __future__ import annotations

import re
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.targets.tensorrt import cache as trtcal
from dgh_deploy.targets.tensorrt import implicit

LINE = re.compile(r"^\S.*: [0-9a-f]{1,8}$")


def test_hex_is_big_endian_float32_of_amax_over_127() -> None:
    assert trtcal.scale_to_hex(1.0) == "3f800000"
    assert trtcal.scale_to_hex(0.5) == "3f000000"
    # The research notes' decoded example: 3caa54fc * 127 = 2.6406, ImageNet-normalised input max.
    assert trtcal.hex_to_scale("3caa54fc") * 127 == pytest.approx((1 - 0.406) / 0.225, rel=1e-3)
    for v in (1e-3, 0.0207, 3.25):
        assert trtcal.hex_to_scale(trtcal.scale_to_hex(v)) == struct.unpack(">f", struct.pack(">f", v))[0]


@pytest.mark.parametrize(("version", "code"), [("8.2.3", 8203), ("7.1.3", 7103), ("10.7.0", 100700),
                                               ("10.7.0.23", 100700), ("8.6.1.6", 8601)])
def test_version_code(version: str, code: int) -> None:
    assert trtcal.version_code(version) == code


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trtcal, "tensorrt_version", lambda: None)  # as on a machine without tensorrt
    amax = {"images": 2.64, "/layer1/layer1.0/Relu_output_0": 5.5, "/conv1/Conv_output_0": 0.0, "onnx::Conv_9": 0.75,
            "output0": 17.25}
    header = trtcal.write_calibration_cache(tmp_path / "model.cache", amax)
    lines = (tmp_path / "model.cache").read_text().splitlines()
    assert header == lines[0] == "TRT-100700-EntropyCalibration2"
    assert all(LINE.match(line) for line in lines[1:]) and len(lines) == 1 + len(amax)
    back = trtcal.read_calibration_cache(tmp_path / "model.cache")
    assert (back.version, back.algorithm) == (100700, "EntropyCalibration2")
    assert list(back.scales) == list(amax)
    for name, a in amax.items():
        assert back.scales[name] == float(trtcal.amax_to_scale(a))  # bit-exact float32
        assert back.scales[name] > 0
        if a:
            assert back.amax()[name] == pytest.approx(a, rel=1e-6)
    assert trtcal.write_calibration_cache(tmp_path / "v8.cache", amax, "8.6.1") == "TRT-8601-EntropyCalibration2"


def test_cache_rejects_garbage_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "x.cache").write_text("not a cache\n")
    with pytest.raises(DGHError, match="not a TensorRT calibration cache"):
        trtcal.read_calibration_cache(tmp_path / "x.cache")
    with pytest.raises(DGHError, match="cannot be written"):
        trtcal.write_calibration_cache(tmp_path / "y.cache", {"a\nb": 1.0})


def _calib(n: int = 10) -> CalibrationSet:
    return CalibrationSet(np.random.default_rng(0).normal(size=(n, 3, 8, 8)).astype(np.float32), "noise")


def test_tensorrt_absent_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes "import tensorrt" fail
    monkeypatch.setattr(implicit, "_CALIBRATOR_CLASS", None)
    with pytest.raises(DGHError, match="TensorRT is not usable here"):
        implicit.entropy_calibrator(_calib(), 16)


def test_tensorrt_11_has_no_implicit_calibrator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    monkeypatch.setattr(implicit, "_CALIBRATOR_CLASS", None)
    with pytest.raises(DGHError, match="removed in 11"):
        implicit.entropy_calibrator2_class()


def test_calibrator_serves_full_batches_and_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeEntropyCalibrator2:  # stands in for tensorrt's pybind base class
        def __init__(self) -> None:
            self.base_initialised = True

    monkeypatch.setitem(sys.modules, "tensorrt",
                        types.SimpleNamespace(__version__="10.7.0", IInt8EntropyCalibrator2=FakeEntropyCalibrator2))
    monkeypatch.setattr(implicit, "_CALIBRATOR_CLASS", None)
    calib = _calib(10)
    cache = tmp_path / "model.cache"
    trtcal.write_calibration_cache(cache, {"images": 3.0})
    calibrator = implicit.entropy_calibrator(calib, 4, cache)
    assert isinstance(calibrator, FakeEntropyCalibrator2) and calibrator.base_initialised
    served: list[np.ndarray] = []
    monkeypatch.setattr(calibrator, "_to_device", lambda b: served.append(b.copy()) or 1000 + len(served))
    assert calibrator.get_batch_size() == 4
    pointers = []
    while (p := calibrator.get_batch(["images"])) is not None:
        pointers.append(p)
    assert pointers == [[1001], [1002]]  # 10 images: two full batches, the short third is dropped
    np.testing.assert_array_equal(np.concatenate(served), calib.images[:8])
    assert calibrator.read_calibration_cache() == cache.read_bytes()
    calibrator.write_calibration_cache(memoryview(b"TRT-100700-EntropyCalibration2\nimages: 3c000000\n"))
    assert trtcal.read_calibration_cache(cache).scales["images"] == pytest.approx(2.0**-7)
    monkeypatch.setattr(implicit, "_CALIBRATOR_CLASS", None)  # do not leak the fake class
