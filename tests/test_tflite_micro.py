"""The TFLite Micro runner: the same int8 file as LiteRT, the same answers up to the kernels' rounding.

Small full-integer files are made with TensorFlow's own converter (seconds, no onnx2tf), with two
outputs of different shapes in a known order, so that the output mapping shared with the LiteRT
runner is checked as well as the values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from dgh_deploy.errors import DGHError
from dgh_deploy.runtime.base import Runner

pytest.importorskip("tflite_micro", reason="tflite-micro (the tflite extra) is not installed")
pytest.importorskip("tensorflow", reason="TensorFlow, whose converter makes these small files, is in the onnx2tf "
                    "venv only (./install.sh --onnx2tf; CI runs this file there)")

IMGSZ = 12


def int8_tflite(path: Path, body: str = "two_heads") -> Path:
    """A full-integer .tflite with int8 I/O from a small Keras model (seeded weights and data)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((IMGSZ, IMGSZ, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    if body == "six_d":  # a rank-6 transpose: TFLite has it, TFLite Micro's kernels stop at rank 5
        x = tf.keras.layers.Lambda(lambda t: tf.reshape(tf.transpose(tf.reshape(t, (1, 6, 2, 6, 2, 8)),
                                                                     (0, 1, 3, 2, 4, 5)), (1, IMGSZ, IMGSZ, 8)))(x)
    if body == "collapsed":  # the difference of two equal constants: an int8 range of one value, as in an
        # untrained YOLOv8 head's DFL box distances; TFLite Micro's SUB aborts preparing its rescale
        ten = tf.keras.initializers.Constant(10.0)
        same = [tf.keras.layers.Conv2D(4, 1, kernel_initializer="zeros", bias_initializer=ten)(x) for _ in range(2)]
        feature = tf.keras.layers.Subtract(name="output_1")(same)
    else:
        feature = tf.keras.layers.Conv2D(4, 1, name="output_1")(x)  # N x H x W x 4: back to N x 4 x H x W
    logits = tf.keras.layers.Dense(10, name="output_0")(tf.keras.layers.GlobalAveragePooling2D()(x))
    model = tf.keras.Model(inp, {"output_0": logits, "output_1": feature})
    rng = np.random.default_rng(0)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.normal(size=(1, IMGSZ, IMGSZ, 3)).astype(np.float32)]
                                           for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    path.write_bytes(conv.convert())
    return path


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return int8_tflite(tmp_path_factory.mktemp("tflm") / "two_heads.tflite")


SHAPES = [(10,), (4, IMGSZ, IMGSZ)]  # PyTorch's outputs: logits, then an NCHW feature map


def test_tflite_micro_agrees_with_litert(two_heads: Path) -> None:
    from dgh_deploy.runtime.litert_runner import LiteRTRunner
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner

    x = np.random.default_rng(1).normal(size=(16, 3, IMGSZ, IMGSZ)).astype(np.float32)
    lite, micro = LiteRTRunner(two_heads, 1, SHAPES), TFLiteMicroRunner(two_heads, SHAPES)
    a, b = lite.infer(x), micro.infer(x)
    assert [o.shape for o in b] == [(16, 10), (16, 4, IMGSZ, IMGSZ)]  # PyTorch's order and layout
    for k, (la, mi) in enumerate(zip(a, b, strict=True)):
        steps = np.abs(la - mi) / lite.outputs[k].scale  # int8 steps apart
        assert steps.max() <= 3.01 and steps.mean() < 0.5, k
    assert (a[0].argmax(1) == b[0].argmax(1)).mean() >= 0.9
    assert micro.describe()["runtime"] == "tflite-micro" and micro.describe()["version"]


def test_worker_processes_give_the_same_outputs(two_heads: Path) -> None:
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner

    x = np.random.default_rng(2).normal(size=(5, 3, IMGSZ, IMGSZ)).astype(np.float32)
    alone, shared = TFLiteMicroRunner(two_heads, SHAPES, workers=1), TFLiteMicroRunner(two_heads, SHAPES, workers=2)
    try:
        a, b = alone.infer(x), shared.infer(x)
        assert len(shared._procs) == 2  # the batch did go to the workers
    finally:
        shared.close()
    for la, sh in zip(a, b, strict=True):
        np.testing.assert_array_equal(la, sh)


def test_the_arena_is_the_least_the_model_runs_in(two_heads: Path) -> None:
    from tflite_micro.python.tflite_micro import runtime

    from dgh_deploy.runtime.native_stderr import captured_stderr
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner

    arena = TFLiteMicroRunner(two_heads, SHAPES).arena_bytes
    assert arena is not None and 1000 < arena < 1 << 20
    runtime.Interpreter.from_file(str(two_heads), arena_size=arena)  # enough...
    with captured_stderr() as log, pytest.raises(RuntimeError):
        runtime.Interpreter.from_file(str(two_heads), arena_size=arena - 256)  # ...and not much more than needed
    assert "allocate" in log.text


def test_a_file_tflite_micro_cannot_run_is_one_line(tmp_path: Path) -> None:
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner

    path = int8_tflite(tmp_path / "six_d.tflite", "six_d")
    with pytest.raises(DGHError, match=r"TFLite Micro cannot run 'six_d.tflite' \(.*Transpose") as err:
        TFLiteMicroRunner(path, SHAPES)
    assert "\n" not in str(err.value)


def test_an_abort_on_a_collapsed_range_names_the_tensor(tmp_path: Path) -> None:
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner, collapsed_ranges

    path = int8_tflite(tmp_path / "collapsed.tflite", "collapsed")
    names = [name for name, _ in collapsed_ranges(path)]
    # The SUB's output only: Keras numbers its call (StatefulPartitionedCall, _1, ...) by the models made before.
    assert len(names) == 1 and names[0].startswith("StatefulPartitionedCall") and names[0].endswith(":1")
    with pytest.raises(DGHError, match=r"\(the interpreter aborted \(signal 6\)\): the int8 tensor "
                                       rf"'{re.escape(names[0])}' has a collapsed range \(scale .*e-0\d") as err:
        TFLiteMicroRunner(path, SHAPES)
    assert "\n" not in str(err.value) and "calibrate on images" in str(err.value)
    assert collapsed_ranges(int8_tflite(tmp_path / "fine.tflite")) == []


def test_the_tflite_targets_attach_tflite_micro(two_heads: Path) -> None:
    from dgh_deploy.targets.tflite.target import micro_runner

    runner, info = micro_runner(two_heads, SHAPES)
    assert runner is not None and info.arena_bytes == runner.arena_bytes


class Doubling(Runner):
    name = "doubling"

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        return [2 * x.reshape(len(x), -1)]


def test_recording_keeps_outputs_up_to_its_budget() -> None:
    from dgh_deploy.runtime.base import RecordingRunner

    x = np.ones((10, 1, 2, 2), np.float32)
    rec = RecordingRunner(Doubling(), keep_bytes=16 * 6)  # room for 6 images of 4 float32s
    for i in range(0, 10, 3):
        np.testing.assert_array_equal(rec.infer(x[i : i + 3])[0], 2 * x[i : i + 3].reshape(-1, 4))
    assert rec.name == "doubling" and rec.outputs()[0].shape == (6, 4) and rec.outputs(2)[0].shape == (2, 4)


def test_captured_stderr_sees_native_writes() -> None:
    from dgh_deploy.runtime.native_stderr import captured_stderr

    with captured_stderr() as log:
        os.write(2, b"from C\n")
    assert log.text == "from C\n"
    os.write(2, b"")  # descriptor 2 is back where it was
