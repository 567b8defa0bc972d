"""tensorrt-int8's section of report.json: the scales' ranges, what was quantized, and how to build the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from dgh_deploy.reporting.section import Facts, TargetSection, written


@dataclass
class TensorRTSection(TargetSection):
    tensorrt: str | None  # the installed tensorrt's version (null where none is)
    act_range: str
    act_range_default: bool  # no --act-range given
    percentile: float | None  # of |x|, for percentile ranges (null otherwise)
    build_commands: list[str]  # trtexec and polygraphy, for the Q/DQ model and for the cache
    engine: str | None  # the engine built here (null without tensorrt and a GPU)
    cache_header: str
    cache_tensors: int
    quantized_layers: int
    qdq_activations: int
    float_layers: dict[str, str]  # compute nodes left in float -> why
    weights: str  # per-channel | per-tensor
    engine_error: str | None = None  # why the engine build failed here
    layout: str = "split"
    ultralytics: dict[str, Any] | None = None  # --layout ultralytics: the rewrapped file and its check

    def to_json(self) -> dict[str, Any]:
        # null versions, percentile and engine are written: readers see they were looked for
        always = {"tensorrt": self.tensorrt, "act_range": self.act_range, "act_range_default": self.act_range_default,
                  "percentile": self.percentile, "build_commands": self.build_commands, "engine": self.engine,
                  "cache_header": self.cache_header, "cache_tensors": self.cache_tensors,
                  "quantized_layers": self.quantized_layers, "qdq_activations": self.qdq_activations,
                  "float_layers": self.float_layers, "weights": self.weights}
        return {**always, **written([("engine_error", self.engine_error)]), "layout": self.layout,
                **written([("ultralytics", self.ultralytics)])}

    @classmethod
    def from_json(cls, d: Facts) -> Self:
        return cls(**d)

    def output_layout(self) -> str:
        return self.layout
