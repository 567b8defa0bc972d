"""``sim``: a fully integer, hardware-friendly pipeline simulated with fake quantization.

Every conv and linear input and the network output are quantized per tensor, weights per
channel (or per tensor), BN folded into the convs first, as real integer targets do. Weights
below 8 bits are rounded to their grid by GPTQ on the calibration set (``dgh_deploy/calibration/weights/gptq.py``; 8-bit
weights, or ``--weight-rounding nearest``, round each weight alone), then the mean shift that
rounding leaves is corrected on the calibration set (empirical bias correction, MCT's PTQ
default; ``--no-bias-correction`` keeps the trained biases). It runs in seconds in PyTorch, so
calibration sets (DGH, real, noise) can be compared at any bit width (W8A8, W4A8, W8A4, ...)
and with IMX500-style power-of-two scales, without a converter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from dgh_deploy.artifacts import write_json
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.calibration.observers import METHODS, QuantGrid
from dgh_deploy.calibration.weights.gptq import ROUNDING_HELP, ROUNDINGS
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.runtime.base import TorchRunner, flatten_outputs
from dgh_deploy.targets.base import (
    BIAS_CORRECTION_FLAGS,
    BuildResult,
    QuantConstraints,
    Target,
    TargetFlag,
    TargetOptions,
    checked_bias_correction,
)
from dgh_deploy.targets.sim.calibrator import SimCalibration, SimCalibrator
from dgh_deploy.targets.sim.fake_quant import (
    ActQuant,
    QuantLayer,
    QuantOutputs,
    fold_batchnorm,
    quantize_layers,
)
from dgh_deploy.targets.sim.section import SimSection
from dgh_deploy.tasks import get_task
from dgh_deploy.verification.layers import LayerError

DEFAULT_ACT_RANGE = "mse"


def default_rounding(weight_bits: int) -> str:
    """GPTQ below 8-bit weights, where it is worth 2 to 3 points; at 8 bits nearest loses little
    and GPTQ gave nothing back (ResNet-56 W8A4 measured slightly lower)."""
    return "gptq" if weight_bits < 8 else "nearest"


class SimRunner(TorchRunner):
    """The fake-quantized module, run like the float one."""

    name = "pytorch-fakequant"


class SimTarget(Target):
    name: ClassVar[str] = "sim"
    summary: ClassVar[str] = "fake-quant simulation of a fully integer pipeline (any bits, power-of-two scales)"
    runtime: ClassVar[str] = "pytorch-fakequant"
    section: ClassVar[type[SimSection]] = SimSection
    flags: ClassVar[tuple[TargetFlag, ...]] = (
        TargetFlag("--act-symmetric", "act_symmetric", "symmetric activations", None),
        TargetFlag("--pot", "power_of_two", "power-of-two scales (as Sony IMX500 requires)", None),
        TargetFlag("--weight-rounding", "weight_rounding", ROUNDING_HELP, choices=ROUNDINGS),
        *BIAS_CORRECTION_FLAGS,
    )

    def __init__(self, options: TargetOptions | None = None, act_symmetric: bool = False,
                 power_of_two: bool = False, weight_rounding: str = "", bias_correction: bool | str = True) -> None:
        super().__init__(options)
        self.act_symmetric, self.power_of_two = act_symmetric, power_of_two
        self.weight_rounding = weight_rounding  # "" = by the weight bits (default_rounding)
        # Empirical bias correction: subtract the mean shift that weight rounding causes, measured on
        # the calibration set. MCT's PTQ default; the real runtimes calibrate ranges only.
        self.bias_correction = checked_bias_correction(bias_correction) != "off"  # the CLI gives on / off

    @property
    def constraints(self) -> QuantConstraints:
        o = self.options
        return QuantConstraints(
            weight_bits=o.weight_bits, act_bits=o.act_bits,
            weight_granularity="per-tensor" if o.per_tensor else "per-channel",
            weight_symmetric=o.weight_symmetric, act_symmetric=self.act_symmetric, power_of_two=self.power_of_two,
            io_dtype="float32", all_layers_quantized=True,
            notes="simulated: integer grid values carried in float32; biases kept in float (int32 on hardware)"
                  + (", corrected for the weights' rounding on the calibration set" if self.bias_correction else "")
                  + ("; weights GPTQ-rounded on the calibration set" if self._weight_rounding() == "gptq" else ""),
        )

    def _weight_rounding(self) -> str:
        return self.weight_rounding or default_rounding(self.options.weight_bits)

    def check_options(self, model: LoadedModel) -> None:
        self._checked_options()

    def _checked_options(self) -> tuple[str, str]:
        """(activation range method, weight rounding), each checked."""
        o = self.options
        for label, bits in (("weight", o.weight_bits), ("activation", o.act_bits)):
            if not 2 <= bits <= 16:
                raise DGHError(f"{label} bits {bits} not supported by the sim target", "use 2 to 16 bits")
        method = o.act_range or DEFAULT_ACT_RANGE
        if method not in METHODS:
            raise DGHError(f"activation range method '{method}' not supported by the sim target",
                           f"use --act-range {' or '.join(METHODS)}")
        o.check_percentile(method)
        rounding = self._weight_rounding()
        if rounding not in ROUNDINGS:
            raise DGHError(f"weight rounding '{rounding}' not supported by the sim target",
                           f"use --weight-rounding {' or '.join(ROUNDINGS)}")
        return method, rounding

    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path, early: Any = None) -> BuildResult:
        method, rounding = self._checked_options()
        calib.check_fits(model.imgsz)
        o = self.options
        t0 = time.perf_counter()
        sim, layers, folded = self._fake_quantized(model, rounding)
        how = SimCalibration(method, o.percentile_or(), self.bias_correction, rounding,
                             get_task(model.task).output_headroom)
        quantizers = SimCalibrator(sim, layers, how).calibrate(calib)
        seconds = time.perf_counter() - t0

        path = workdir / "sim_scales.json"
        write_json(path, self._scales(method, quantizers, layers))
        info = SimSection(len(layers), len(quantizers), folded[0], folded[1], method, self.bias_correction, rounding,
                          len(calib), how.output_headroom)
        return BuildResult(artifacts={"model": path}, runner=SimRunner(sim), info=info,
                           timings={"calibration": seconds})

    layer_runtime: ClassVar[str] = "PyTorch, the fake-quantized model against float (BN folded alike)"

    def layer_errors(self, model: LoadedModel, result: BuildResult, images: np.ndarray) -> list[LayerError]:
        from dgh_deploy.targets.sim.layer_errors import sim_layer_errors

        runner = result.runner
        assert isinstance(runner, SimRunner)
        return sim_layer_errors(model.module, runner.module, images)

    def _fake_quantized(self, model: LoadedModel, rounding: str) -> tuple[QuantOutputs, list[QuantLayer],
                                                                             tuple[int, int]]:
        """The model with BN folded and every conv/linear layer and output fake-quantized, uncalibrated."""
        o = self.options
        w_grid = QuantGrid(o.weight_bits, o.weight_symmetric, self.power_of_two, narrow=True)
        a_grid = QuantGrid(o.act_bits, self.act_symmetric, self.power_of_two)
        net, folded, n_bn = fold_batchnorm(model.module)
        with torch.no_grad():
            n_out = len(flatten_outputs(net(model.dummy_input())))
        # MSE-searched weight ranges: at 4 bits min-max wastes most of the grid on outliers.
        layers = quantize_layers(net, w_grid, a_grid, per_channel=not o.per_tensor, weight_method="mse",
                                 rounding=rounding)
        if not layers:
            raise DGHError(f"model '{model.name}' has no conv or linear layer to quantize", "pass an image model")
        return QuantOutputs(net, a_grid, n_out).eval(), layers, (folded, n_bn)

    def _scales(self, method: str, quantizers: list[ActQuant], layers: list[QuantLayer]) -> dict[str, Any]:
        """sim_scales.json: every activation's range, scale and zero point, and the weight scales."""
        return {
            "format": "dgh-deploy sim scales v1", "weights": self.constraints.describe(), "act_range": method,
            "activations": {q.name: {"range": list(q.range or ()), "scale": float(q.qparams[0]),
                                     "zero_point": int(q.qparams[1])} for q in quantizers},
            "weight_scales": {layer.act.name: layer.w_qparams[0].flatten().tolist() for layer in layers},
        }
