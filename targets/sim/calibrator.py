"""The sim calibrator: activation ranges, bias correction and GPTQ rounding, from the calibration set.

It looks at the set up to three times, as the fake-quantized model needs:

1. the range of every quantized tensor (and, for bias correction, each layer's mean input);
2. a histogram of each tensor within that range (skipped for min/max, which needs none), after
   which the activation grids are fixed;
3. with GPTQ rounding, each layer's input moment as the deployed model feeds it (activations
   already rounded), after which the weights are rounded.

Ranges are calibrated on the float model, as TFLite and TensorRT do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from dgh_deploy.targets.base import Calibrator, Layout
from dgh_deploy.targets.sim.fake_quant import ActQuant, QuantLayer, QuantOutputs, act_quantizers

CALIB_BATCH = 64


@dataclass(frozen=True)
class SimCalibration:
    """How the fake-quantized model is calibrated: range method, percentile, corrections."""

    act_range: str  # minmax | mse | percentile
    percentile: float
    bias_correction: bool
    weight_rounding: str  # gptq | nearest
    output_headroom: float = 1.0  # the task's: the network outputs' range tops times this


class SimCalibrator(Calibrator[list[ActQuant]]):
    """Calibrates a :class:`QuantOutputs` model in place; yields its activation quantizers."""

    layout: ClassVar[Layout] = "NCHW"

    def __init__(self, sim: QuantOutputs, layers: list[QuantLayer], how: SimCalibration) -> None:
        self.steps = ["range"] + ([] if how.act_range == "minmax" else ["counts"])
        self.steps += ["moment"] if how.weight_rounding == "gptq" else []
        super().__init__(batch_size=CALIB_BATCH, passes=len(self.steps))
        self.sim, self.layers, self.how = sim, layers, how
        self.quantizers = list(act_quantizers(sim))

    def begin_pass(self, index: int) -> None:
        step = self.steps[index]
        if step == "moment":
            self._fix_activation_grids()  # GPTQ must see the activations as deployed
        for q in self.quantizers:
            q.mode = step if step != "moment" else "quant"
        for layer in self.layers:
            layer.observe_mean = self.how.bias_correction and step == "range"
            layer.observe_moment = step == "moment"

    @torch.no_grad()
    def observe(self, batch: np.ndarray) -> None:
        self.sim(torch.from_numpy(batch))

    def result(self) -> list[ActQuant]:
        if self.steps[-1] != "moment":
            self._fix_activation_grids()
        for layer in self.layers:
            layer.observe_mean = layer.observe_moment = False
            if self.how.weight_rounding == "gptq":
                layer.round_weights()
            layer.use_quant_weights(True)
            if self.how.bias_correction:
                layer.correct_bias()
        return self.quantizers

    def _fix_activation_grids(self) -> None:
        outputs = {id(q) for q in self.sim.out_quant}
        for q in self.quantizers:
            q.calibrate(self.how.act_range, self.how.percentile,
                        self.how.output_headroom if id(q) in outputs else 1.0)
            q.mode = "quant"
        for layer in self.layers:
            layer.observe_mean = False
