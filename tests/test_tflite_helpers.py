"""The tflite-int8 target's pieces that need no conversion: calibrator, parity maths, log reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.targets.tflite.calibrator import TFLiteCalibrator
from dgh_deploy.verification.parity import compare_outputs


def test_calibrator_writes_nhwc_with_identity_normalisation(tmp_path: Path) -> None:
    images = np.random.default_rng(0).normal(size=(5, 3, 6, 7)).astype(np.float32)
    name, path, mean, std = TFLiteCalibrator(tmp_path / "c.npy", (6, 7)).calibrate(
        CalibrationSet(images, "noise")).as_onnx2tf_entry()
    data = np.load(path)
    assert name == "images" and data.shape == (5, 6, 7, 3) and data.dtype == np.float32
    np.testing.assert_array_equal(data, images.transpose(0, 2, 3, 1))
    # onnx2tf feeds (data - mean) / std: it must give back exactly the model-space images
    np.testing.assert_array_equal((data - mean) / std, data)


def test_calibrator_refuses_a_wrong_size_or_non_finite_set(tmp_path: Path) -> None:
    images = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(DGHError, match="8 x 8 but the model takes 3 x 32 x 32"):
        TFLiteCalibrator(tmp_path / "c.npy", (32, 32)).calibrate(CalibrationSet(images, "noise"))
    images[1, 0, 0, 0] = np.nan
    with pytest.raises(DGHError, match="NaN or Inf"):
        TFLiteCalibrator(tmp_path / "c.npy", (8, 8)).calibrate(CalibrationSet(images, "noise"))
    assert not (tmp_path / "c.npy").exists()


def test_parity_tolerance_is_relative_to_the_output_scale() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(scale=10.0, size=(20, 10)).astype(np.float32)
    scale = float(np.abs(ref).max())
    assert compare_outputs([ref], [ref + 1e-4 * scale], classify=True).passed
    bad = compare_outputs([ref], [ref + 1e-2 * scale], classify=True)
    assert not bad.passed and bad.top1_agreement == 100.0  # a shift keeps the ranking, not the values
    assert compare_outputs([ref], [ref + 1e-2 * scale], atol=2e-2 * scale).passed


def test_parity_counts_clear_top1_disagreements() -> None:
    ref = np.array([[5.0, 0.0, -1.0], [1.0, 0.999, 0.0]], np.float32)
    cand = np.array([[0.0, 5.0, -1.0], [0.999, 1.0, 0.0]], np.float32)
    res = compare_outputs([ref], [cand], atol=0.01, classify=True)
    # the first image flips with a 5-logit margin; the second is a near-tie within tolerance
    assert res.top1_agreement == 0.0 and res.top1_disagreements == 1 and not res.passed


def test_a_quantizer_failure_is_its_telling_line() -> None:
    from dgh_deploy.targets.tflite.onnx2tf_converter import int8_failure

    nested = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1, in convert\n"
                          "RuntimeError: Quantization not yet supported for op: 'ERF'.\n")
    assert int8_failure(nested) == "RuntimeError: Quantization not yet supported for op: 'ERF'."
    mlir = ValueError("<unknown>:0: note: see current operation\n<unknown>:0: error: 'tfl.erf' op is neither a "
                      "custom op nor a flex op\n")
    assert int8_failure(mlir) == "ValueError: <unknown>:0: error: 'tfl.erf' op is neither a custom op nor a flex op"
    assert int8_failure(RuntimeError("")) == "RuntimeError: no reason given"


def test_a_handler_made_while_the_converter_is_quiet_still_logs_after_it(tmp_path: Path,
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    """A library imported inside the capture (TensorFlow's absl, a basicConfig) binds its handler to
    the redirected stderr, the log file closed afterwards: a second job's warning in the same process
    must still reach the console, not fail with 'I/O operation on closed file'."""
    import logging

    from dgh_deploy.targets.tflite.console import capture_output

    logger = logging.getLogger("dgh-test-capture")
    logger.propagate = False
    try:
        with capture_output(tmp_path / "converter.log"):
            logger.addHandler(logging.StreamHandler())  # binds sys.stderr as it is now: the log file
            logger.warning("inside")
        logger.warning("after the capture")
        err = capfd.readouterr().err
        assert "after the capture" in err and "Logging error" not in err and "inside" not in err
        assert "inside" in (tmp_path / "converter.log").read_text()
    finally:
        logger.handlers.clear()
