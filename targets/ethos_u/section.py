"""ethos-u's section of report.json: tflite-int8's, and ``ethos_u``, Vela's compilation of the int8 file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from dgh_deploy.reporting.section import Facts, TargetSection
from dgh_deploy.targets import section_types
from dgh_deploy.targets.ethos_u.vela import VelaReport

# The target whose file Vela compiles. It is found by name in the registry, never imported: no target
# folder imports another.
TFLITE_INT8 = "tflite-int8"

ETHOS_U_SCHEMA: dict[str, Any] = {
    "description": (
        "Vela's compilation for an Ethos-U NPU: op placement (every op left to the CPU with Vela's reason), "
        "memory in KiB, its estimated time and cycles. sram_kib includes the weights in an SRAM-only memory mode; "
        "fits_sram compares it with the mode's SRAM when the mode names a size."
    ),
    "type": "object",
    "required": [
        "accelerator",
        "system_config",
        "memory_mode",
        "npu_ops",
        "cpu_ops",
        "cpu_fallback",
        "sram_kib",
        "flash_kib",
        "inference_ms",
        "cycles_total",
        "macs",
        "require_npu",
    ],
    "properties": {
        "accelerator": {"type": "string"},
        "system_config": {"type": "string"},
        "memory_mode": {"type": "string"},
        "npu_ops": {"type": "integer", "minimum": 0},
        "cpu_ops": {"type": "integer", "minimum": 0},
        "npu_op_share": {"type": "number"},
        "cpu_fallback": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["op", "name", "reason"],
                "properties": {
                    "op": {"type": "string"},
                    "name": {"type": "string"},
                    "reason": {"type": "string"},
                    "constraint": {"type": "string"},
                },
            },
        },
        "sram_kib": {"type": "number", "minimum": 0},
        "flash_kib": {"type": "number", "minimum": 0},
        "dram_kib": {"type": "number", "minimum": 0},
        "sram_capacity_kib": {"type": ["number", "null"]},
        "fits_sram": {"type": ["boolean", "null"]},
        "inference_ms": {"type": "number", "minimum": 0},
        "cycles_total": {"type": "integer"},
        "cycles_npu": {"type": "integer"},
        "macs": {"type": "integer"},
        "core_clock_mhz": {"type": "number"},
        "memory_kib": {"type": "object", "additionalProperties": {"type": "number"}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "vela_version": {"type": "string"},
        "seconds": {"type": "number"},
        "require_npu": {"type": "boolean"},
    },
}


@dataclass
class NpuSection:
    """``ethos_u``: where Vela placed the ops, what the NPU costs, and whether --require-npu asks for every op there."""

    vela: VelaReport
    require_npu: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.vela.as_dict(), "require_npu": self.require_npu}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        return cls(VelaReport.from_json(d), d["require_npu"])


def tflite_section_type() -> type[TargetSection]:
    """tflite-int8's section type, as the registry declares it."""
    return section_types()[TFLITE_INT8]


@dataclass
class EthosUSection(TargetSection):
    """tflite-int8's section (this target builds that file), then Vela's compilation of it. report.json
    shows them as one flat object: tflite-int8's keys, then ``ethos_u``."""

    tflite: TargetSection  # of tflite_section_type(): what tflite-int8's build wrote
    ethos_u: NpuSection | None = None  # None until Vela has compiled the file

    def to_json(self) -> Facts:
        npu = {"ethos_u": self.ethos_u.to_json()} if self.ethos_u else {}
        return {**self.tflite.to_json(), **npu}

    @classmethod
    def from_json(cls, d: Facts) -> Self:
        tflite = tflite_section_type().from_json({k: v for k, v in d.items() if k != "ethos_u"})
        return cls(tflite, NpuSection.from_json(d["ethos_u"]) if "ethos_u" in d else None)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return {**tflite_section_type().json_schema(), "ethos_u": ETHOS_U_SCHEMA}

    def output_layout(self) -> str:
        return self.tflite.output_layout()
