"""tflite-int8's bias correction on a converted file: each conv's int8 mean moves onto the float one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


class Net(nn.Module):
    """Convs after a SiLU (whose int8 rounding through the curve shifts means), a fused ReLU6, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.a(x))
        y = nn.functional.silu(self.b(y))
        y = nn.functional.relu6(self.c(y))
        return self.head(y.mean((1, 2)) if y.shape[-1] == 8 else y.mean((2, 3)))


def _files(images: list[np.ndarray]) -> tuple[bytes, bytes]:
    """The float file and its int8 file quantized with min/max ranges on ``images`` (as litert-torch's build)."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    import litert_torch
    from ai_edge_quantizer import qtyping, quantizer

    from dgh_deploy.runtime.litert_runner import open_interpreter
    from dgh_deploy.targets.tflite.litert_qsv import calibration_result
    from dgh_deploy.targets.tflite.ranges import activation_ranges

    torch.manual_seed(0)
    module = litert_torch.to_channel_last_io(Net().eval(), args=[0]).eval()
    float_bytes = bytes(litert_torch.convert(module, (torch.randn(1, 16, 16, 3),)).model_content())
    qt = quantizer.Quantizer(float_bytes)
    qt.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8,
                         weight_granularity=qtyping.QuantGranularity.CHANNELWISE)
    signature = next(iter(open_interpreter(float_bytes, delegates=False).get_signature_list()))
    ranges = activation_ranges(float_bytes, images, "minmax")
    qsvs = calibration_result(float_bytes, qt.get_quantization_recipe(), signature, ranges)
    return float_bytes, bytes(qt.quantize(qsvs, enable_progress_report=False).quantized_model)


def test_each_convs_int8_mean_moves_onto_the_float_one_and_nothing_else_changes() -> None:
    from dgh_deploy.targets.tflite.bias_correction import correct_biases, mean_errors

    rng = np.random.default_rng(0)
    images = [rng.normal(size=(1, 16, 16, 3)).astype(np.float32) for _ in range(16)]
    float_bytes, int8_bytes = _files(images)  # the ranges read NHWC images, the correction the model's NCHW
    images = np.concatenate(images).transpose(0, 3, 1, 2)
    corrected, done = correct_biases(float_bytes, int8_bytes, images, progress=False)
    assert len(corrected) == len(int8_bytes) and done.ops >= 2 and done.levels == 4 and done.images == 16
    changed = np.flatnonzero(np.frombuffer(corrected, np.uint8) != np.frombuffer(int8_bytes, np.uint8))
    assert changed.size > 0
    before, after = mean_errors(float_bytes, int8_bytes, images), mean_errors(float_bytes, corrected, images)
    assert set(before) == set(after) and len(before) == 4  # three convs and the linear head
    total_before = sum(float(np.abs(v).sum()) for v in before.values())
    total_after = sum(float(np.abs(v).sum()) for v in after.values())
    assert total_after < 0.5 * total_before, (total_before, total_after)


def test_a_graph_prefix_computes_what_the_whole_graph_computes_up_to_its_cut() -> None:
    from dgh_deploy.runtime.litert_runner import open_interpreter
    from dgh_deploy.targets.tflite.flatbuffer import graph_prefix

    image = np.random.default_rng(1).normal(size=(1, 16, 16, 3)).astype(np.float32)
    _, int8_bytes = _files([image])
    whole = open_interpreter(int8_bytes, preserve_all=True, delegates=False)
    ops = whole._get_ops_details()
    cut = next(op for op in ops if op["op_name"] == "CONV_2D" and op["index"] > 0)  # a conv after the first op
    wanted = int(cut["outputs"][0])
    prefix = open_interpreter(graph_prefix(int8_bytes, int(cut["index"]), [wanted]), delegates=False)
    assert len(prefix._get_ops_details()) == int(cut["index"]) + 1 < len(ops)
    for it in (whole, prefix):
        inp = it.get_input_details()[0]
        scale, zero = inp["quantization"]
        it.set_tensor(inp["index"], np.clip(np.rint(image / scale) + zero, -128, 127).astype(inp["dtype"]))
        it.invoke()
    assert prefix.get_output_details()[0]["index"] == wanted
    np.testing.assert_array_equal(prefix.get_tensor(wanted), whole.get_tensor(wanted))
