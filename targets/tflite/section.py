"""tflite-int8's section of report.json: the converter and its checks, the file's I/O, TFLite Micro's run."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Self

from dgh_deploy.reporting.section import Facts, TargetSection, written

MICRO_SCHEMA: dict[str, Any] = {
    "description": "The int8 file on TFLite Micro: arena_bytes is its tensor arena (RAM besides the "
                   "weights); skipped or error when it did not run.",
    "type": "object",
    "properties": {"runtime": {"type": "string"}, "version": {"type": "string"},
                   "arena_bytes": {"type": ["integer", "null"], "minimum": 0},
                   "image_limit": {"type": ["integer", "null"], "minimum": 1},
                   "kernels": {"type": "object", "description": (
                       "Where LiteRT's and TFLite Micro's kernels part on one calibration image: ops "
                       "whose int8 outputs differ, the first, those adding the most difference (RMS "
                       "int8 steps over their inputs'), and how many of each op type add some")},
                   "skipped": {"type": "string"}, "error": {"type": "string"}},
}


@dataclass
class MicroSection:
    """``tflite_micro``: the int8 file on TFLite Micro, or why it did not run there."""

    runtime: str | None = None  # set when it ran: the four keys of the run are written, null ones too
    version: str | None = None
    arena_bytes: int | None = None  # RAM besides the weights
    image_limit: int | None = None
    kernels: dict[str, Any] | None = None  # where LiteRT's and TFLite Micro's kernels part (kernel_parity)
    skipped: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        ran = ({"runtime": self.runtime, "version": self.version, "arena_bytes": self.arena_bytes,
                "image_limit": self.image_limit} if self.runtime is not None else {})
        return {**ran, **written([("kernels", self.kernels), ("skipped", self.skipped), ("error", self.error)])}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        return cls(**d)


@dataclass
class TFLiteSection(TargetSection):
    """What the build checked and wrote. ``conversion`` holds the converter's own keys (its versions,
    quantization recipe, activation ranges), written between the checks and ``tflite_micro``."""

    converter: str
    float_parity: dict[str, Any]  # the float file against PyTorch on calibration images
    float_ops: list[dict[str, Any]]  # float ops left in the int8 file (--allow-float-ops)
    io: dict[str, Any]  # the int8 file's input and outputs: names, shapes, dtypes, scales
    calibration_images: int
    conversion: dict[str, Any]
    tflite_micro: MicroSection
    layout: str
    ultralytics: dict[str, Any] | None = None  # --layout ultralytics: the rewrapped file and its check
    float_parity_before_generation: dict[str, Any] | None = None  # the preflight's check on probes
    export_rewrites: dict[str, Any] | None = None  # the SiLU floor, or why there is none
    act_range_default: bool | None = None  # no --act-range given

    def to_json(self) -> dict[str, Any]:
        checks = {"converter": self.converter, "float_parity": self.float_parity, "float_ops": self.float_ops,
                  "io": self.io, "calibration_images": self.calibration_images}
        return {**checks, **self.conversion, **written([
            ("tflite_micro", self.tflite_micro.to_json()), ("layout", self.layout),
            ("ultralytics", self.ultralytics), ("float_parity_before_generation", self.float_parity_before_generation),
            ("export_rewrites", self.export_rewrites), ("act_range_default", self.act_range_default)])}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        return cls(**cls.arguments(d))

    @classmethod
    def arguments(cls, d: dict[str, Any]) -> dict[str, Any]:
        """The constructor's keywords for the keys ``d``: the keys no field is named for are the converter's."""
        named = {f.name for f in fields(cls)}
        return {**{k: v for k, v in d.items() if k in named},
                "conversion": {k: v for k, v in d.items() if k not in named},
                "tflite_micro": MicroSection.from_json(d["tflite_micro"])}

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return {"tflite_micro": MICRO_SCHEMA}

    def output_layout(self) -> str:
        return self.layout


def tflite_section(facts: TargetSection | Facts) -> TFLiteSection | None:
    """``facts`` as tflite-int8's section; None for a section of another type."""
    return facts if isinstance(facts, TFLiteSection) else None
