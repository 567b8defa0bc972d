"""sim's section of report.json: how many layers and tensors were fake-quantized, and how."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Self

from dgh_deploy.reporting.section import TargetSection


@dataclass
class SimSection(TargetSection):
    quantized_layers: int  # conv and linear layers, weights and inputs
    quantized_tensors: int  # activation quantizers: the layers' inputs and the network's outputs
    bn_folded: int
    bn_layers: int
    act_range: str
    bias_correction: bool
    weight_rounding: str  # gptq | nearest
    calibration_images: int
    output_headroom: float | None = None  # the outputs' range tops times this (TaskAdapter.output_headroom)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.output_headroom is None:  # a report written before the headroom
            del d["output_headroom"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        return cls(**d)
