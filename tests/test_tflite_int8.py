"""The tflite-int8 target end to end: real onnx2tf conversions, the LiteRT runtime, real CIFAR-10 images.

Conversions are the slow part (15-20 s each on 2 cores), so the ResNet-20 build is shared by the
module; the failure cases use small models or fail before converting.
"""

from __future__ import annotations

import contextlib
import copy
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.loading import load_model
from dgh_deploy.models.cifar_resnet import export_form
from dgh_deploy.onnx_export import export_onnx
from dgh_deploy.preprocessing import Preprocessing
from dgh_deploy.runtime.base import TorchRunner
from dgh_deploy.runtime.litert_runner import open_interpreter
from dgh_deploy.targets import TargetOptions, get_target
from dgh_deploy.targets.tflite.integer_ops import check_full_integer, list_float_ops
from dgh_deploy.tasks.classify import ClassifyTask, evenly_spaced, list_image_folder

pytest.importorskip("onnx2tf", reason="the tflite extra (onnx2tf, tensorflow, ai-edge-litert) is not installed")

N_CALIB = 64


def real_images(model: LoadedModel, folder: Path, n: int) -> np.ndarray:
    files, _, _ = list_image_folder(folder)
    return np.stack([model.preprocessing.load(str(files[i]), model.imgsz) for i in evenly_spaced(len(files), n)])


@contextlib.contextmanager
def refuse_network() -> Iterator[list[Any]]:
    """Every name lookup or connection fails, and is recorded."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network access during conversion")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket.socket, "connect", lambda self, address: refuse(address))
        yield attempts


def build_offline(options: TargetOptions, model: LoadedModel, calib: CalibrationSet,
                  workdir: Path) -> tuple[Any, list[Any]]:
    target = get_target("tflite-int8")
    target.options = options
    with refuse_network() as attempts:
        result = target.build(model, calib, workdir)
    return result, attempts


@pytest.fixture(scope="module")
def r20(r20_weights: str) -> LoadedModel:
    return load_model("cifar_resnet20", r20_weights)


@pytest.fixture(scope="module")
def calib(r20: LoadedModel, assets: Path) -> CalibrationSet:
    return CalibrationSet(real_images(r20, assets / "cifar10" / "calib", N_CALIB), "real:calib")


@pytest.fixture(scope="module")
def built(r20: LoadedModel, calib: CalibrationSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("r20_tflite")
    result, attempts = build_offline(TargetOptions(), r20, calib, workdir)
    return {"result": result, "workdir": workdir, "attempts": attempts}


@pytest.fixture
def logs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Failed conversions keep their log in the temp folder: keep them out of the real /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def tiny_model(name: str, body: nn.Module) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(module=body.eval(), name=name, task="classify", imgsz=(8, 8), preprocessing=Preprocessing())


def noise_calib(n: int = 8, size: int = 8) -> CalibrationSet:
    return CalibrationSet(np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32), "noise")


class SinNet(nn.Module):
    """SIN has no int8 kernel in TFLite: the converter leaves it in float between (DE)QUANTIZE."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sin(self.conv(x)).mean((2, 3)))


class _CastLike(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)

    @staticmethod
    def symbolic(g: Any, x: Any, like: Any) -> Any:
        return g.op("CastLike", x, like)


class CastLikeNet(nn.Module):
    """A standard ONNX op (CastLike, opset 15) that onnx2tf 1.29 has no converter for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_CastLike.apply(torch.relu(self.conv(x)), x).mean((2, 3)))


class ThreeMaps(nn.Module):
    """Feature-map outputs like a detector head's: two of one shape, one square in C, H and W."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.sigmoid(self.a(x)), self.b(x) * 3.0, self.c(x)


# --- the ResNet-20 build ---------------------------------------------------------------------------


def test_build_writes_only_checked_artifacts(built: dict[str, Any]) -> None:
    result, workdir = built["result"], built["workdir"]
    names = {p.name for p in workdir.iterdir()}
    assert names == {"cifar_resnet20.onnx", "cifar_resnet20_float32.tflite", "cifar_resnet20_full_integer_quant.tflite"}
    assert result.artifacts["model"] == workdir / "cifar_resnet20_full_integer_quant.tflite"
    assert result.artifacts["float_model"] == workdir / "cifar_resnet20_float32.tflite"
    assert all(p.stat().st_size > 0 for p in result.artifacts.values())
    info = result.info
    assert info["float_parity"]["passed"] and info["float_parity"]["top1_agreement"] == 100.0
    assert max(info["float_parity"]["max_abs_error"]) < 1e-3  # float rounding, not a conversion error
    assert info["float_ops"] == []
    assert info["io"]["input"]["dtype"] == "int8" and info["io"]["outputs"][0]["dtype"] == "int8"
    assert info["calibration_images"] == N_CALIB and info["quant_type"] == "per-channel"
    assert {"export", "conversion", "parity"} <= set(result.timings)


def test_conversion_never_touches_the_network(built: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert built["attempts"] == []
    # The guard does catch onnx2tf's download when its sample file is absent from the working folder.
    from onnx2tf.utils.common_functions import download_test_image_data

    monkeypatch.chdir(tmp_path)
    with refuse_network() as attempts, contextlib.suppress(Exception):
        download_test_image_data()
    assert attempts


def test_int8_file_is_integer_only_and_the_checker_sees_float(built: dict[str, Any]) -> None:
    result = built["result"]
    assert check_full_integer(result.artifacts["model"], "int8") == []
    float_ops = list_float_ops(result.artifacts["float_model"])
    assert {"CONV_2D", "FULLY_CONNECTED"} <= {f.op for f in float_ops}
    with pytest.raises(DGHError, match="does not have int8 I/O"):
        check_full_integer(result.artifacts["float_model"], "int8")


def test_int8_accuracy_follows_float(built: dict[str, Any], r20: LoadedModel, assets: Path) -> None:
    task, test_dir = ClassifyTask(), str(assets / "cifar10" / "test")
    f = task.evaluate(TorchRunner(r20.module), r20, test_dir, limit=500)
    q = task.evaluate(built["result"].runner, r20, test_dir, limit=500)
    assert f["top1"] > 75.0
    assert abs(f["top1"] - q["top1"]) <= 3.0, (f, q)
    x = real_images(r20, assets / "cifar10" / "test", 200)
    agree = task.agreement(TorchRunner(r20.module).infer(x), built["result"].runner.infer(x))
    assert agree["top1_agreement"] >= 90.0 and agree["output_sqnr_db"] > 15.0, agree


def test_runner_dequantizes_onto_the_output_grid(built: dict[str, Any], calib: CalibrationSet) -> None:
    runner = built["result"].runner
    out = runner.infer(calib.images[:4])[0]
    assert out.shape == (4, 10) and out.dtype == np.float32
    o = runner.outputs[0]
    q = out / o.scale + o.zero_point
    assert np.allclose(q, np.rint(q), atol=1e-3) and q.min() >= -128.5 and q.max() <= 127.5
    assert len(np.unique(np.rint(q))) > 4  # not a constant output


@pytest.mark.slow  # a second full conversion
def test_uint8_io_and_per_tensor_weights(r20: LoadedModel, calib: CalibrationSet, built: dict[str, Any],
                                         tmp_path: Path) -> None:
    result, _ = build_offline(TargetOptions(io_dtype="uint8", per_tensor=True), r20, calib, tmp_path)
    assert result.info["io"]["input"]["dtype"] == "uint8" and result.info["quant_type"] == "per-tensor"
    assert check_full_integer(result.artifacts["model"], "uint8") == []

    def conv_weight_scales(path: Path) -> list[int]:
        it = open_interpreter(path, delegates=False)
        details = {t["index"]: t for t in it.get_tensor_details()}
        return [len(details[int(op["inputs"][1])]["quantization_parameters"]["scales"])
                for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]

    assert set(conv_weight_scales(result.artifacts["model"])) == {1}
    assert max(conv_weight_scales(built["result"].artifacts["model"])) > 1
    x = calib.images[:16]
    agree = ClassifyTask().agreement(TorchRunner(r20.module).infer(x), result.runner.infer(x))
    assert agree["top1_agreement"] >= 75.0, agree


# --- what must fail, and how -------------------------------------------------------------------------


@pytest.mark.slow  # a full conversion plus the layer search
def test_parity_catches_the_unrewritten_option_a_shortcut(r20: LoadedModel, calib: CalibrationSet,
                                                          tmp_path: Path, logs_in_tmp: Path) -> None:
    onnx_path = export_onnx(r20, tmp_path / "strided_slice.onnx",
                            module=export_form(copy.deepcopy(r20.module), use_conv=False))
    workdir = tmp_path / "work"
    with pytest.raises(DGHError) as err:
        get_target("tflite-int8").build_from_onnx(r20, onnx_path, calib, workdir)
    msg = str(err.value)
    assert "float conversion disagrees with PyTorch" in msg and "top-1 agreement" in msg
    assert "shortcut" in msg  # the first diverging layer is named
    assert "\n" not in msg
    assert not workdir.exists() or not any(workdir.iterdir())


def test_an_op_onnx2tf_cannot_convert_is_named(tmp_path: Path, logs_in_tmp: Path) -> None:
    workdir = tmp_path / "work"
    with pytest.raises(DGHError, match="onnx2tf cannot convert CastLike"):
        get_target("tflite-int8").build(tiny_model("castlike_net", CastLikeNet()), noise_calib(), workdir)
    assert not workdir.exists() or not any(workdir.iterdir())


def test_float_ops_are_refused_or_recorded_and_the_converter_stays_quiet(
        tmp_path: Path, logs_in_tmp: Path, capfd: pytest.CaptureFixture[str]) -> None:
    model = tiny_model("sin_net", SinNet())
    target = get_target("tflite-int8")
    with pytest.raises(DGHError, match=r"not full-integer.*SIN"):
        target.build(model, noise_calib(), tmp_path / "strict")
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())

    capfd.readouterr()
    target.options = TargetOptions(allow_float_ops=True)
    result = target.build(model, noise_calib(), tmp_path / "mixed")
    out, err = capfd.readouterr()
    assert "SIN" in {f["op"] for f in result.info["float_ops"]}
    assert result.info["io"]["input"]["dtype"] == "int8"  # the I/O contract holds even for a mixed model
    chatter = [ln for ln in (out + err).splitlines() if ln.strip() and "XNNPACK delegate" not in ln]
    assert chatter == [], chatter[:5]


def test_runner_gives_multiple_nchw_outputs_in_pytorch_order(tmp_path: Path) -> None:
    model = tiny_model("three_maps", ThreeMaps())
    calib = noise_calib(16)
    result = get_target("tflite-int8").build(model, calib, tmp_path)
    assert result.info["float_parity"]["passed"]  # the float file through the same runner mapping
    ref = TorchRunner(model.module).infer(calib.images)
    out = result.runner.infer(calib.images)
    assert [o.shape for o in out] == [r.shape for r in ref] == [(16, 4, 8, 8), (16, 4, 8, 8), (16, 8, 8, 8)]
    for r, q in zip(ref, out, strict=True):  # each output matches its own PyTorch output, not another
        assert np.corrcoef(r.ravel(), q.ravel())[0, 1] > 0.99


def test_calibration_of_the_wrong_size_fails_before_converting(r20: LoadedModel, tmp_path: Path) -> None:
    wrong = CalibrationSet(np.zeros((4, 3, 16, 16), np.float32), "noise")
    with pytest.raises(DGHError, match=r"4 x 3 x 16 x 16 but the model takes 3 x 32 x 32"):
        get_target("tflite-int8").build(r20, wrong, tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(("options", "message"), [
    (TargetOptions(weight_bits=4), "quantizes to 8 bits, not W4A8"),
    (TargetOptions(power_of_two=True), "follows the TFLite int8 spec"),
    (TargetOptions(io_dtype="float32"), "has no 'float32' I/O"),
    (TargetOptions(act_range="mse"), "by min/max only, not 'mse'"),
])
def test_options_tflite_cannot_honour_are_refused(options: TargetOptions, message: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by the option check itself, before any export: a model that converts fine, and a
    converter that fails the test if it is ever reached."""
    import dgh_deploy.targets.tflite.target as tflite_target

    def no_export(*_: object, **__: object) -> None:
        raise AssertionError("the export started: the option was not refused")

    monkeypatch.setattr(tflite_target, "export_onnx", no_export)
    target = get_target("tflite-int8")
    target.options = options
    model = tiny_model("three_maps", ThreeMaps())
    with pytest.raises(DGHError, match=re.escape(message)):
        target.check_options(model)
    with pytest.raises(DGHError, match=re.escape(message)):
        target.build(model, noise_calib(), tmp_path)
