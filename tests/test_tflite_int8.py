"""The tflite-int8 target end to end: real conversions, the LiteRT runtime, real CIFAR-10 images.

Every case that holds for both converters runs for each (``converter`` fixture); a venv holds
one converter stack, so the other's cases skip, naming what is missing. Conversions are the slow
part (onnx2tf 15-20 s, litert-torch about 10 s on 2 cores), so the ResNet-20 build is shared per
converter; the failure cases use small models or fail before converting.
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
from dgh_deploy.targets.tflite.converter import CONVERTERS, LITERT_TORCH, ONNX2TF
from dgh_deploy.targets.tflite.integer_ops import check_full_integer, io_dtypes, list_float_ops
from dgh_deploy.targets.tflite.target import TFLiteInt8Target, converter_class, probe_images
from dgh_deploy.tasks.classify import ClassifyTask, evenly_spaced, list_image_folder

N_CALIB = 64
OPTION_A_RESNET = str(Path(__file__).parent / "models" / "option_a_resnet.py") + ":option_a_resnet"


def stack_or_skip(name: str) -> str:
    """``name`` if its converter stack is installed in this venv, else the test skips, saying what is missing."""
    cls = converter_class(name)
    missing = cls().missing_requirements()
    if missing:
        pytest.skip(f"the {name} converter stack is not in this venv ({', '.join(missing)} missing): "
                    f"{cls.install_hint}")
    return name


@pytest.fixture(scope="module", params=CONVERTERS)
def converter(request: pytest.FixtureRequest) -> str:
    return stack_or_skip(request.param)


def tflite_target(converter: str, options: TargetOptions | None = None, **settings: Any) -> TFLiteInt8Target:
    target = get_target("tflite-int8", converter=converter, **settings)
    assert isinstance(target, TFLiteInt8Target)
    target.options = options or TargetOptions()
    return target


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
                  workdir: Path, converter: str, **settings: Any) -> tuple[Any, list[Any]]:
    target = tflite_target(converter, options, **settings)
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
def built(r20: LoadedModel, calib: CalibrationSet, converter: str,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp(f"r20_tflite_{converter}")
    result, attempts = build_offline(TargetOptions(), r20, calib, workdir, converter)
    return {"result": result, "workdir": workdir, "attempts": attempts, "converter": converter}


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
    via_onnx = {"cifar_resnet20.onnx"} if built["converter"] == ONNX2TF else set()  # litert-torch needs no ONNX
    assert names == {"cifar_resnet20_float32.tflite", "cifar_resnet20_full_integer_quant.tflite", *via_onnx}
    assert result.artifacts["model"] == workdir / "cifar_resnet20_full_integer_quant.tflite"
    assert result.artifacts["float_model"] == workdir / "cifar_resnet20_float32.tflite"
    assert all(p.stat().st_size > 0 for p in result.artifacts.values())
    info = result.info
    assert info.float_parity["passed"] and info.float_parity["top1_agreement"] == 100.0
    assert max(info.float_parity["max_abs_error"]) < 1e-3  # float rounding, not a conversion error
    assert info.float_ops == []
    assert info.io["input"]["dtype"] == "int8" and info.io["outputs"][0]["dtype"] == "int8"
    assert info.calibration_images == N_CALIB and info.conversion["quant_type"] == "per-channel"
    assert info.converter == built["converter"]
    assert info.io["input"]["shape"] == [1, 32, 32, 3]  # NHWC, as edge runtimes take images
    assert {"export", "conversion", "parity"} <= set(result.timings)


def test_tflite_micro_reads_the_same_weights_as_litert(built: dict[str, Any], calib: CalibrationSet) -> None:
    """Every weight inside the flatbuffer (TFLite Micro reads no buffer stored after it), and TFLite
    Micro's answers those of LiteRT up to its kernels' rounding."""
    pytest.importorskip("tflite_micro", reason="tflite-micro (the edge extra) is not installed")
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner
    from dgh_deploy.targets.tflite.flatbuffer import outside_buffers

    result = built["result"]
    assert outside_buffers(result.artifacts["model"].read_bytes()) == 0
    micro = TFLiteMicroRunner(result.artifacts["model"], workers=1)
    x = calib.images[:16]
    a, b = result.runner.infer(x)[0], micro.infer(x)[0]
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    # XNNPACK and the reference kernels round some int8 ops differently: up to 5 steps on ResNet-20's logits
    assert np.abs(a - b).max() <= 6 * result.runner.outputs[0].scale


def test_conversion_never_touches_the_network(built: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert built["attempts"] == []
    if built["converter"] != ONNX2TF:
        return
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
def test_per_tensor_weights_and_the_other_io_type(r20: LoadedModel, calib: CalibrationSet, built: dict[str, Any],
                                                  tmp_path: Path) -> None:
    converter = built["converter"]
    result, _ = build_offline(TargetOptions(per_tensor=True), r20, calib, tmp_path, converter, io_dtype="uint8")
    assert result.info.io["input"]["dtype"] == "uint8" and result.info.conversion["quant_type"] == "per-tensor"
    assert io_dtypes(result.artifacts["model"]) == {"inputs": ["uint8"], "outputs": ["uint8"]}
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
    micro = getattr(result.runner, "device_runner", None)
    if micro is not None:  # the uint8 file on the MCU runtime too (its QUANTIZE kernels requantize the I/O)
        assert (micro.infer(x[:8])[0].argmax(1) == result.runner.infer(x[:8])[0].argmax(1)).mean() >= 0.85


@pytest.mark.slow  # two more quantizations (histograms over the calibration set)
def test_the_projects_ranges_replace_the_converters_own(converter: str, r20: LoadedModel, calib: CalibrationSet,
                                                       built: dict[str, Any], tmp_path: Path) -> None:
    """Both converters quantize with the project's per-tensor ranges: MSE keeps the accuracy, and a
    low percentile visibly narrows the logits' range (its int8 step) against min/max."""
    mse, _ = build_offline(TargetOptions(act_range="mse"), r20, calib, tmp_path / "mse", converter)
    assert mse.info.conversion["act_range"] == "mse" and mse.info.conversion["project_ranges"] > 20  # every activation
    x = calib.images[:32]
    ref = TorchRunner(r20.module).infer(x)
    assert ClassifyTask().agreement(ref, mse.runner.infer(x))["top1_agreement"] >= 85.0

    narrow, _ = build_offline(TargetOptions(act_range="percentile", percentile=90.0), r20, calib, tmp_path / "p90",
                              converter)
    minmax = built["result"]  # a classifier's: the logits' top 1.5x above the set's (ClassifyTask.output_headroom)
    assert minmax.info.conversion["output_headroom"] == 1.5 and minmax.info.conversion["project_ranges"] > 20
    step = {name: r.runner.io_details()["outputs"][0]["scale"] for name, r in (("p90", narrow), ("minmax", minmax))}
    assert step["p90"] < 0.8 * step["minmax"], step
    if converter == ONNX2TF:  # min/max without headroom is TensorFlow's own calibration, untouched
        own, _ = build_offline(TargetOptions(), r20, calib, tmp_path / "own", converter, output_headroom=1.0)
        assert own.info.conversion["project_ranges"] == 0
        own_step = own.runner.io_details()["outputs"][0]["scale"]
        assert 1.1 * own_step < step["minmax"] < 1.5 * own_step, (step, own_step)  # the top rose, the bottom stayed


def test_bias_correction_moves_the_int8_means_onto_the_float_ones(converter: str, r20: LoadedModel,
                                                                 calib: CalibrationSet, built: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    """Bias correction (a classifier's default), through either converter's file (their float and int8
    tensors share names, but for TensorFlow's numbered constants): the report says how many convs moved, the
    int8 convs' mean errors against the float file shrink, and the classifier still agrees with PyTorch."""
    from dgh_deploy.targets.tflite.bias_correction import MAX_IMAGES, mean_errors

    fixed = built["result"]
    plain, _ = build_offline(TargetOptions(), r20, calib, tmp_path / "plain", converter, bias_correction="off")
    assert plain.info.conversion["bias_correction"] == "off"
    done = fixed.info.conversion["bias_correction"]
    assert done["ops"] >= 15 and done["images"] == min(len(calib), MAX_IMAGES) and done["levels"] >= 15  # 22 ops
    images = calib.images[:MAX_IMAGES]  # the images it was corrected on
    before = mean_errors(plain.artifacts["float_model"], plain.artifacts["model"].read_bytes(), images)
    after = mean_errors(fixed.artifacts["float_model"], fixed.artifacts["model"].read_bytes(), images)
    size = {name: float(np.abs(np.concatenate(list(e.values()))).mean()) for name, e in (("before", before),
                                                                                         ("after", after))}
    assert size["after"] < 0.5 * size["before"], size
    x = calib.images[:32]
    assert ClassifyTask().agreement(TorchRunner(r20.module).infer(x), fixed.runner.infer(x))["top1_agreement"] >= 85.0


@pytest.mark.slow  # one more conversion (int16 activations)
def test_litert_writes_int16_activations(r20: LoadedModel, calib: CalibrationSet, tmp_path: Path) -> None:
    stack_or_skip(LITERT_TORCH)
    x = calib.images[:32]
    ref = TorchRunner(r20.module).infer(x)
    a16, _ = build_offline(TargetOptions(act_bits=16), r20, calib, tmp_path / "a16", LITERT_TORCH)
    assert a16.info.conversion["recipe"] == "static_wi8_ai16"
    assert io_dtypes(a16.artifacts["model"]) == {"inputs": ["int16"], "outputs": ["int16"]}
    assert list_float_ops(a16.artifacts["model"]) == []
    agree = ClassifyTask().agreement(ref, a16.runner.infer(x))
    assert agree["top1_agreement"] >= 95.0 and agree["output_sqnr_db"] > 30.0, agree  # int16: far finer


@pytest.mark.slow  # a detector conversion (30-40 s with either converter)
def test_a_detector_keeps_its_split_outputs(converter: str, tmp_path: Path) -> None:
    """Boxes and scores stay two int8 outputs, each with its own scale, in PyTorch's order (tasks/detect_layout.py)."""
    torch.manual_seed(0)
    model = load_model("yolov8n.yaml", imgsz=64)
    anchors = sum((64 // s) ** 2 for s in (8, 16, 32))
    x = np.random.default_rng(0).uniform(0, 1, (8, 3, 64, 64)).astype(np.float32)
    result = tflite_target(converter).build(model, CalibrationSet(x, "noise"), tmp_path)
    assert io_dtypes(result.artifacts["model"]) == {"inputs": ["int8"], "outputs": ["int8", "int8"]}
    assert list_float_ops(result.artifacts["model"]) == []
    outputs = result.info.io["outputs"]
    assert [o["shape"][1:] for o in outputs] == [[4, anchors], [80, anchors]]
    assert outputs[0]["scale"] != outputs[1]["scale"]
    parity = result.info.float_parity
    assert parity["passed"] and len(parity["tolerance"]) == 2
    ref, q = TorchRunner(model.module).infer(x[:2]), result.runner.infer(x[:2])
    assert [o.shape for o in q] == [o.shape for o in ref] == [(2, 4, anchors), (2, 80, anchors)]
    assert np.abs(q[0] - ref[0]).mean() < 0.1 * np.abs(ref[0]).mean()


# --- the check before generation ---------------------------------------------------------------------------


def test_a_users_option_a_resnet_converts_with_litert_and_onnx2tf_refuses_it(converter: str, tmp_path: Path,
                                                                            logs_in_tmp: Path) -> None:
    """The textbook strided-slice shortcut, in a user's own model file: refused before any generation
    with onnx2tf (one line, naming the converter and the way out), converted right by litert-torch."""
    model = load_model(OPTION_A_RESNET)
    target = tflite_target(converter)
    if converter == ONNX2TF:
        with pytest.raises(DGHError) as err:
            target.preflight(model)
        msg = str(err.value)
        assert msg.startswith("onnx2tf's float conversion disagrees with PyTorch") and "Pad" in msg
        assert "--converter litert-torch" in msg and "\n" not in msg
        return
    early = target.preflight(model)
    calib = CalibrationSet(probe_images(model, 16, seed=1), "noise")
    converts = []
    cls = type(target.converter())
    real_convert = cls.convert_float
    with pytest.MonkeyPatch.context() as mp:  # the build quantizes the preflight's float file: no second conversion
        mp.setattr(cls, "convert_float", lambda *a, **k: converts.append(1) or real_convert(*a, **k))
        result = target.build(model, calib, tmp_path / "work", early)
    assert converts == []
    assert result.info.float_parity_before_generation["passed"] and result.info.float_parity["passed"]
    assert max(result.info.float_parity["max_abs_error"]) < 1e-4
    assert check_full_integer(result.artifacts["model"], "int8") == []


def test_the_job_refuses_before_generating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float check runs before the calibration set is made: a failing preflight means no generation."""
    import dgh_deploy.pipeline as pipeline

    def no_generation(*_: object, **__: object) -> None:
        raise AssertionError("generation started before the float conversion was checked")

    def refuse(self: TFLiteInt8Target, model: LoadedModel) -> None:
        raise DGHError("the float conversion disagrees", "use the other converter")

    monkeypatch.setattr(pipeline, "_calibration_images", no_generation)
    monkeypatch.setattr(TFLiteInt8Target, "preflight", refuse)
    monkeypatch.setattr(TFLiteInt8Target, "missing_requirements", lambda self: [])
    with pytest.raises(DGHError, match="the float conversion disagrees"):
        pipeline.deploy(pipeline.DeployConfig(target="tflite-int8", model=OPTION_A_RESNET, out=str(tmp_path / "o")))


# --- what must fail, and how -------------------------------------------------------------------------


@pytest.mark.slow  # a full conversion plus the layer search
def test_parity_catches_the_unrewritten_option_a_shortcut(r20: LoadedModel, calib: CalibrationSet,
                                                          tmp_path: Path, logs_in_tmp: Path) -> None:
    stack_or_skip(ONNX2TF)  # an ONNX file: onnx2tf's own input
    onnx_path = export_onnx(r20, tmp_path / "strided_slice.onnx",
                            module=export_form(copy.deepcopy(r20.module), use_conv=False))
    workdir = tmp_path / "work"
    with pytest.raises(DGHError) as err:
        tflite_target(ONNX2TF).build_from_onnx(r20, onnx_path, calib, workdir)
    msg = str(err.value)
    assert "float conversion disagrees with PyTorch" in msg and "top-1 agreement" in msg
    assert "shortcut" in msg  # the first diverging layer is named
    assert "--converter litert-torch" in msg
    assert "\n" not in msg
    assert not workdir.exists() or not any(workdir.iterdir())


def test_an_op_onnx2tf_cannot_convert_is_named(tmp_path: Path, logs_in_tmp: Path) -> None:
    stack_or_skip(ONNX2TF)  # an ONNX op
    workdir = tmp_path / "work"
    with pytest.raises(DGHError, match="onnx2tf cannot convert CastLike"):
        tflite_target(ONNX2TF).build(tiny_model("castlike_net", CastLikeNet()), noise_calib(), workdir)
    assert not workdir.exists() or not any(workdir.iterdir())


def test_float_ops_are_refused_or_recorded_and_the_converter_stays_quiet(
        converter: str, tmp_path: Path, logs_in_tmp: Path, capfd: pytest.CaptureFixture[str]) -> None:
    model = tiny_model("sin_net", SinNet())
    target = tflite_target(converter)
    target.progress = False  # the converters' chatter is what must not show; the job's own bars may
    with pytest.raises(DGHError, match=r"not full-integer.*SIN"):
        target.build(model, noise_calib(), tmp_path / "strict")
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())

    capfd.readouterr()
    target.allow_float_ops = True
    result = target.build(model, noise_calib(), tmp_path / "mixed")
    out, err = capfd.readouterr()
    assert "SIN" in {f["op"] for f in result.info.float_ops}
    assert result.info.io["input"]["dtype"] == "int8"  # the I/O contract holds even for a mixed model
    chatter = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert chatter == [], chatter[:5]  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line too


def test_runner_gives_multiple_nchw_outputs_in_pytorch_order(converter: str, tmp_path: Path) -> None:
    model = tiny_model("three_maps", ThreeMaps())
    calib = noise_calib(16)
    result = tflite_target(converter).build(model, calib, tmp_path)
    assert result.info.float_parity["passed"]  # the float file through the same runner mapping
    ref = TorchRunner(model.module).infer(calib.images)
    out = result.runner.infer(calib.images)
    assert [o.shape for o in out] == [r.shape for r in ref] == [(16, 4, 8, 8), (16, 4, 8, 8), (16, 8, 8, 8)]
    for r, q in zip(ref, out, strict=True):  # each output matches its own PyTorch output, not another
        assert np.corrcoef(r.ravel(), q.ravel())[0, 1] > 0.99


def test_calibration_of_the_wrong_size_fails_before_converting(converter: str, r20: LoadedModel,
                                                               tmp_path: Path) -> None:
    wrong = CalibrationSet(np.zeros((4, 3, 16, 16), np.float32), "noise")
    with pytest.raises(DGHError, match=r"4 x 3 x 16 x 16 but the model takes 3 x 32 x 32"):
        tflite_target(converter).build(r20, wrong, tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(("converter_name", "options", "message"), [
    (ONNX2TF, TargetOptions(weight_bits=4), "quantizes to 8 bits (or int16 activations with int8 weights), not W4A8"),
    (ONNX2TF, TargetOptions(weight_symmetric=False), "follows the TFLite int8 spec: symmetric weights"),
    (ONNX2TF, ({}, {"io_dtype": "float32"}), "has no 'float32' I/O"),
    (ONNX2TF, TargetOptions(act_range="entropy"), "by min/max / percentile / mse only, not 'entropy'. drop "
                                                  "--act-range, or use --converter litert-torch"),
    (ONNX2TF, TargetOptions(act_bits=16), "--converter onnx2tf has no 16-bit activations"),
    (LITERT_TORCH, TargetOptions(act_range="entropy"), "by min/max / percentile / mse only, not 'entropy'"),
    (LITERT_TORCH, ({"act_bits": 16}, {"io_dtype": "uint8"}), "the model I/O is int16, not uint8"),
    (LITERT_TORCH, TargetOptions(percentile=99.9), "--percentile 99.9 has no effect"),
])
def test_options_tflite_cannot_honour_are_refused(converter_name: str, options: Any, message: str,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by the option check itself, before any export: a model that converts fine, and a
    converter that fails the test if it is ever reached (neither stack needs to be installed).
    ``options`` is shared options, or (shared options, the target's own settings) as keywords."""

    def no_export(*_: object, **__: object) -> None:
        raise AssertionError("the export started: the option was not refused")

    monkeypatch.setattr(TFLiteInt8Target, "export_module", no_export)
    shared, own = options if isinstance(options, tuple) else (options, {})
    target = tflite_target(converter_name, shared if isinstance(shared, TargetOptions) else TargetOptions(**shared),
                           **own)
    model = tiny_model("three_maps", ThreeMaps())
    with pytest.raises(DGHError, match=re.escape(message)):
        target.check_options(model)
    with pytest.raises(DGHError, match=re.escape(message)):
        target.build(model, noise_calib(), tmp_path)


def test_the_converter_is_a_flag_and_its_missing_stack_is_one_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from dgh_deploy.targets.tflite.litert_converter import LiteRTTorchConverter

    assert [f.flag for f in TFLiteInt8Target.flags] == ["--layout", "--io-dtype", "--allow-float-ops", "--converter",
                                                       "--int16-layers", "--weight-rounding", "--output-headroom",
                                                       "--bias-correction", "--no-bias-correction"]
    with pytest.raises(DGHError, match="unknown converter 'tf2onnx'"):
        get_target("tflite-int8", converter="tf2onnx")
    monkeypatch.setattr(LiteRTTorchConverter, "requires", ("litert_torch_not_installed",))
    target = tflite_target(LITERT_TORCH)
    missing = target.missing_requirements()
    assert "litert_torch_not_installed" in missing
    assert "dgh-deploy[litert]" in target.install_hint_for(missing)


def test_choosing_a_converter_imports_neither_stack() -> None:
    """The target, its converter choice and its option checks load no converter stack (they load in build)."""
    import subprocess
    import sys

    code = ("import sys; from dgh_deploy.targets import get_target; t = get_target('tflite-int8'); "
            "t.missing_requirements(); [get_target('tflite-int8', converter=c).converter() for c in "
            f"{list(CONVERTERS)!r}]; print(sorted(m for m in ('tensorflow', 'onnx2tf', 'litert_torch', "
            "'ai_edge_quantizer') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow  # one more conversion (mixed int8 / int16)
def test_int16_layers_keep_the_named_modules_at_int16(r20: LoadedModel, calib: CalibrationSet, tmp_path: Path) -> None:
    """--int16-layers: the ops of the named modules (and only those) get int16 activations on a grid
    about 256 times finer, and the file stays integer-only with int8 I/O."""
    from dgh_deploy.targets.tflite.layer_sqnr import module_path

    stack_or_skip(LITERT_TORCH)
    held = calib.images[:4]
    plain, _ = build_offline(TargetOptions(), r20, calib, tmp_path / "int8", LITERT_TORCH)
    mixed, _ = build_offline(TargetOptions(), r20, calib, tmp_path / "mixed", LITERT_TORCH, int16_layers="layer3.2")
    assert mixed.info.conversion["int16_layers"] == ["layer3.2"] and "ai16" in mixed.info.conversion["recipe"]
    assert io_dtypes(mixed.artifacts["model"]) == {"inputs": ["int8"], "outputs": ["int8"]}
    assert list_float_ops(mixed.artifacts["model"]) == []
    it = open_interpreter(mixed.artifacts["model"], delegates=False)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    dtypes = {}
    for op in it._get_ops_details():
        out = tensors[int(op["outputs"][0])]
        if op["op_name"] != "QUANTIZE":
            dtypes.setdefault(module_path(out["name"]).startswith("layer3.2"), set()).add(out["dtype"].__name__)
    assert dtypes == {True: {"int16"}, False: {"int8"}}
    target = tflite_target(LITERT_TORCH)
    rows = {name: {r.layer: r for r in target.layer_errors(r20, result, held)}
            for name, result in (("int8", plain), ("mixed", mixed))}
    for layer in ("layer3.2.conv1", "layer3.2.conv2", "layer3.2"):
        assert rows["mixed"][layer].scale < rows["int8"][layer].scale / 100  # 16 bits over the same range
    assert rows["mixed"]["layer3.1"].scale == rows["int8"]["layer3.1"].scale  # the module before: untouched


def test_int16_layers_that_name_nothing_are_refused_before_generation(r20: LoadedModel) -> None:
    stack_or_skip(LITERT_TORCH)
    target = tflite_target(LITERT_TORCH, int16_layers="layer3.2,layer9")
    with pytest.raises(DGHError, match="names no op of the converted model: layer9"):
        target.preflight(r20)
    with pytest.raises(DGHError, match="cannot keep single layers at int16"):
        tflite_target(ONNX2TF, int16_layers="layer3.2").check_options(r20)


@pytest.mark.slow  # two YOLOv5n conversions at 160
def test_the_int8_file_does_not_depend_on_the_thread_count(assets: Path, tmp_path: Path) -> None:
    """Same model and images, --threads 1 and 2: the same bytes. (LiteRT's float kernels give other last
    bits on two threads; before the ranges were taken on one, 251 of 623 scales differed.)"""
    stack_or_skip(LITERT_TORCH)
    model = load_model("yolov5n", str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt"), None, 160)
    calib = CalibrationSet(np.random.default_rng(0).uniform(0, 1, (16, 3, 160, 160)).astype(np.float32), "noise")
    files = [tflite_target(LITERT_TORCH, TargetOptions(threads=t)).build(model, calib, tmp_path / str(t))
             .artifacts["model"].read_bytes() for t in (1, 2)]
    assert files[0] == files[1]
