"""tflite-int8's activation ranges: exact percentile tails kept image by image, and each task's default (fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dgh_deploy.calibration.observers import Histogram, PercentileObserver, QuantGrid, check_percentile, estimate_range
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Preprocessing
from dgh_deploy.targets import TargetOptions, get_target
from dgh_deploy.targets.tflite.target import act_range_for


@pytest.mark.parametrize("signed", [True, False])
def test_tails_are_the_exact_order_statistics_of_every_image_together(signed: bool) -> None:
    rng = np.random.default_rng(0)
    images = [rng.standard_t(3, size=(1, 20, 20, 8)).astype(np.float32) for _ in range(12)]
    if not signed:
        images = [np.abs(x) + 0.5 for x in images]  # a ReLU-like tensor: nothing negative
    every = np.concatenate([x.ravel() for x in images])
    k = math.ceil(1e-3 * every.size)
    tails = PercentileObserver(k)
    for x in images:
        tails.observe(x)
    lo, hi = tails.range()
    ordered = np.sort(every)
    assert hi == ordered[-k]
    assert lo == (min(ordered[k - 1], 0.0) if signed else ordered[0])
    # the histogram's reading of the same percentile (linear within 2048 bins) agrees within a bin or two
    h = Histogram()
    for x in images:
        h.observe_range(torch.from_numpy(x))
    for x in images:
        h.observe_counts(torch.from_numpy(x))
    h_lo, h_hi = estimate_range(h, "percentile", QuantGrid(8, symmetric=False), 99.9)
    width = (h.hi - h.lo) / h.bins
    assert abs(h_hi - hi) <= 2 * width and abs(h_lo - lo) <= 2 * width


def test_a_percentile_outside_the_range_is_refused() -> None:
    with pytest.raises(DGHError, match="percentile 40"):
        check_percentile(40.0)


def loaded(task: str, imgsz: tuple[int, int] = (8, 8)) -> LoadedModel:
    return LoadedModel(module=nn.Identity(), name=task, task=task, imgsz=imgsz, preprocessing=Preprocessing())


def test_a_large_detector_takes_mse_ranges() -> None:
    """At 640 x 480 pixels and above a detector's ranges are mse (measured at 320 and 640); a classifier's,
    and what the user asks for, stay as they are."""
    assert act_range_for(loaded("detect", (640, 640)), TargetOptions())[0] == "mse"
    assert act_range_for(loaded("detect", (480, 640)), TargetOptions())[0] == "mse"
    assert act_range_for(loaded("detect", (320, 640)), TargetOptions())[0] == "minmax"
    assert act_range_for(loaded("classify", (640, 640)), TargetOptions())[0] == "minmax"
    assert act_range_for(loaded("detect", (640, 640)), TargetOptions(act_range="minmax"))[0] == "minmax"


@pytest.mark.parametrize(("task", "options", "expected"), [
    ("classify", TargetOptions(), ("minmax", 99.99)),
    ("detect", TargetOptions(), ("minmax", 99.999)),
    ("detect", TargetOptions(act_range="percentile"), ("percentile", 99.999)),
    ("detect", TargetOptions(act_range="percentile", percentile=99.9), ("percentile", 99.9)),
    ("detect", TargetOptions(act_range="minmax"), ("minmax", 99.999)),
    ("classify", TargetOptions(act_range="mse"), ("mse", 99.99)),
])
def test_min_max_unless_told_otherwise_and_detectors_keep_their_tails(task: str, options: TargetOptions,
                                                                 expected: tuple[str, float]) -> None:
    assert act_range_for(loaded(task), options) == expected


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_a_percentile_without_percentile_ranges_is_refused(task: str) -> None:
    target = get_target("tflite-int8", converter="onnx2tf")
    target.options = TargetOptions(percentile=99.9)
    with pytest.raises(DGHError, match=r"--percentile 99\.9 has no effect"):
        target.check_options(loaded(task))
    target.options = TargetOptions(act_range="percentile", percentile=99.9)
    target.check_options(loaded(task))


def op(name: str, inputs: list[int], outputs: list[int]) -> dict[str, object]:
    return {"op_name": name, "inputs": inputs, "outputs": outputs}


def test_a_tensor_read_only_by_an_activation_is_found_with_its_function() -> None:
    from dgh_deploy.targets.tflite.activation_readers import activation_readers

    ops = [op("CONV_2D", [0, 90, 91], [1]), op("LOGISTIC", [1], [2]), op("MUL", [1, 2], [3]),  # SiLU of 1
           op("CONV_2D", [3, 92, 93], [4]), op("LOGISTIC", [4], [5]), op("MUL", [4, 5], [6]),
           op("ADD", [4, 6], [7]),  # 4 is also read as it is: plain error
           op("LOGISTIC", [7], [8]), op("MUL", [8, 3], [9]),  # a sigmoid gate on 3: 7 is seen through a sigmoid
           op("CONV_2D", [9, 94, 95], [10]), op("HARD_SWISH", [10], [11]), op("TANH", [11], [12])]
    found = activation_readers(ops, {i: f"t{i}" for i in range(100)})
    assert {name: kind for name, (kind, _) in found.items()} == {"t1": "SILU", "t7": "LOGISTIC",
                                                                  "t10": "HARD_SWISH", "t11": "TANH"}
    x = torch.linspace(-6, 6, 13)
    assert torch.equal(found["t1"][1](x), nn.functional.silu(x))


def test_the_silu_inputs_of_a_converted_file_are_found() -> None:
    """The patterns as litert-torch writes them: a floored SiLU's input (the MAXIMUM's output) is found;
    a plain SiLU's input that a residual add also reads is not."""
    pytest.importorskip("litert_torch")
    import litert_torch

    from dgh_deploy.runtime.litert_runner import open_interpreter
    from dgh_deploy.targets.tflite.activation_readers import activation_readers
    from dgh_deploy.targets.tflite.silu_floor import FlooredSiLU

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.floored, self.silu = FlooredSiLU(), nn.SiLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.floored(self.a(x))
            pre = self.b(y)
            return self.silu(pre) + pre  # pre is read by the SiLU and by the add

    module = litert_torch.to_channel_last_io(Block().eval(), args=[0]).eval()
    content = bytes(litert_torch.convert(module, (torch.randn(1, 8, 8, 3),)).model_content())
    it = open_interpreter(content, num_threads=1, preserve_all=True, delegates=False)
    ops = it._get_ops_details()
    names = {int(t["index"]): str(t["name"]) for t in it.get_tensor_details()}
    found = activation_readers(ops, names)
    maximum = next(o for o in ops if o["op_name"] == "MAXIMUM")
    silu_input = names[int(maximum["outputs"][0])]
    assert list(found) == [silu_input] and found[silu_input][0] == "SILU"


def test_the_outputs_top_gets_the_headroom_and_no_other_range_moves() -> None:
    """A classifier's logits reach ``output_headroom`` times above the set's largest, on a converted file."""
    pytest.importorskip("litert_torch")
    import litert_torch

    from dgh_deploy.runtime.litert_runner import open_interpreter
    from dgh_deploy.targets.tflite.ranges import activation_ranges

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    module = litert_torch.to_channel_last_io(net, args=[0]).eval()
    content = bytes(litert_torch.convert(module, (torch.randn(1, 8, 8, 3),)).model_content())
    images = [np.random.default_rng(i).normal(size=(1, 8, 8, 3)).astype(np.float32) for i in range(4)]
    plain = activation_ranges(content, images, "minmax")
    wide = activation_ranges(content, images, "minmax", output_headroom=1.5)
    out = open_interpreter(content, num_threads=1, delegates=False).get_output_details()[0]["name"]
    assert plain[out][1] > 0 and wide[out] == (plain[out][0], pytest.approx(1.5 * plain[out][1]))
    assert {k: v for k, v in wide.items() if k != out} == {k: v for k, v in plain.items() if k != out}
