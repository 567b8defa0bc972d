"""litert-torch's int8 file from the project's ranges alone: ai-edge-quantizer's calibration result is
built from them (targets/tflite/litert_qsv.py) instead of running its calibration and overwriting it.

The file must be what the old path wrote, byte for byte: ``Quantizer.calibrate`` on every image,
then each tensor's min/max replaced by the project's range."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_generation_models import as_loaded, tiny_bn_net
from torch import nn

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.targets.tflite.converter import LITERT_TORCH, ConversionSettings, FloatModel
from dgh_deploy.targets.tflite.target import converter_class

IMGSZ = (16, 16)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, nn.Module, FloatModel]:
    missing = converter_class(LITERT_TORCH)().missing_requirements()
    if missing:
        pytest.skip(f"the litert-torch stack is not in this venv ({', '.join(missing)} missing)")
    from dgh_deploy.targets.tflite.litert_converter import LiteRTTorchConverter

    model = as_loaded(nn.Sequential(tiny_bn_net(), nn.Softmax(dim=1)), IMGSZ)
    module = model.for_export()
    return model, module, LiteRTTorchConverter().convert_float(model, module, tmp_path_factory.mktemp("float"))


def calib() -> CalibrationSet:
    return CalibrationSet(np.random.default_rng(0).normal(size=(6, 3, *IMGSZ)).astype(np.float32), "noise")


def old_path(float_model: FloatModel, settings: ConversionSettings, ranges: dict[str, tuple[float, float]]) -> bytes:
    """What ``LiteRTTorchConverter.quantize`` did before: the quantizer calibrates, the project overrides."""
    from ai_edge_quantizer import qtyping, quantizer

    from dgh_deploy.runtime.litert_runner import open_interpreter
    from dgh_deploy.targets.tflite.flatbuffer import inline_buffers

    qt = quantizer.Quantizer(float_model.path.read_bytes())
    granularity = qtyping.QuantGranularity.TENSORWISE if settings.per_tensor else qtyping.QuantGranularity.CHANNELWISE
    qt.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=settings.act_bits,
                         weight_num_bits=8, weight_granularity=granularity)
    signature, io = next(iter(open_interpreter(float_model.path, delegates=False).get_signature_list().items()))
    images = calib().images.transpose(0, 2, 3, 1)
    qsvs = qt.calibrate({signature: [{io["inputs"][0]: images[i : i + 1]} for i in range(len(images))]},
                        num_threads=1)
    for name, (lo, hi) in ranges.items():
        entry = qsvs.get(name)
        if entry and "min" in entry:
            entry["min"], entry["max"] = np.full_like(entry["min"], lo), np.full_like(entry["max"], hi)
    return inline_buffers(bytes(qt.quantize(qsvs, enable_progress_report=False).quantized_model))


@pytest.mark.parametrize("settings", [ConversionSettings(), ConversionSettings(act_range="percentile", percentile=99.0),
                                      ConversionSettings(act_bits=16, per_tensor=True)],
                         ids=["minmax", "percentile", "a16-per-tensor"])
def test_the_int8_file_is_the_one_calibrate_then_override_wrote(float_model: tuple[Any, nn.Module, FloatModel],
                                                                settings: ConversionSettings, tmp_path: Path) -> None:
    from dgh_deploy.targets.tflite.litert_converter import LiteRTTorchConverter

    model, module, fm = float_model
    converter = LiteRTTorchConverter(settings)
    data = converter.calibrator(model, tmp_path, fm).calibrate(calib())
    conv = converter.quantize(model, module, fm, data, tmp_path)
    assert conv.int8_model.read_bytes() == old_path(fm, settings, data.ranges)
    assert conv.info["project_ranges"] == len(data.ranges)  # every tensor the quantizer takes, as before


def test_the_tensors_and_shapes_are_the_quantizers_own(float_model: tuple[Any, nn.Module, FloatModel],
                                                       tmp_path: Path) -> None:
    """The walk finds exactly the tensors ``Quantizer.calibrate`` records, each as a (1,) * rank float32 array."""
    from ai_edge_quantizer import qtyping, quantizer

    from dgh_deploy.runtime.litert_runner import open_interpreter
    from dgh_deploy.targets.tflite.litert_converter import LiteRTTorchConverter
    from dgh_deploy.targets.tflite.litert_qsv import calibration_result

    model, _, fm = float_model
    data = LiteRTTorchConverter().calibrator(model, tmp_path, fm).calibrate(calib())
    qt = quantizer.Quantizer(fm.path.read_bytes())
    qt.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    images = calib().images.transpose(0, 2, 3, 1)
    input_name = open_interpreter(fm.path, delegates=False).get_signature_list()[data.signature]["inputs"][0]
    theirs = qt.calibrate({data.signature: [{input_name: images[i : i + 1]} for i in range(2)]}, num_threads=1)
    ours = calibration_result(fm.path.read_bytes(), qt.get_quantization_recipe(), data.signature, data.ranges)
    assert list(ours) == list(theirs)
    for name, entry in ours.items():
        assert {k: (v.shape, v.dtype) for k, v in entry.items()} == \
            {k: (theirs[name][k].shape, theirs[name][k].dtype) for k in ("min", "max")}
        assert (float(entry["min"].item()), float(entry["max"].item())) == \
            tuple(float(np.float32(v)) for v in data.ranges[name])

    # A tensor the quantizer needs and the project did not observe is named, not filled in by the quantizer.
    dropped = next(iter(ours))
    partial = {k: v for k, v in data.ranges.items() if k != dropped}
    with pytest.raises(DGHError, match=f"did not observe: '{dropped}'"):
        calibration_result(fm.path.read_bytes(), qt.get_quantization_recipe(), data.signature, partial)
