"""Ethos-U's part of the report: Vela's placement and estimates in report.md, the --require-npu
check, and the schema of report.json's ``target.ethos_u``."""

from __future__ import annotations

from typing import Any

from dgh_deploy.verification.gate import GateCheck

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



def npu_check(npu: dict[str, Any]) -> GateCheck:
    """--require-npu: every op Vela compiled on the NPU, or the ops it left to the CPU, and why."""
    total = npu["npu_ops"] + npu["cpu_ops"]
    where = f"{npu['accelerator']} ({npu['system_config']}, {npu['memory_mode']})"
    fix = ("change the model so Vela can place those ops (report.json lists each, with Vela's reason), "
           "or drop --require-npu")
    if npu["cpu_ops"] == 0:
        return GateCheck("require_npu", True, f"PASS: all {total} ops on the NPU of {where}, as --require-npu asks",
                         fix)
    shown = [f"{op['op']} '{op['name'][:60]}' ({op['reason']})" for op in npu["cpu_fallback"][:3]]
    more = len(npu["cpu_fallback"]) - len(shown)
    named = ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "Vela named none"
    return GateCheck("require_npu", False, f"FAIL: {npu['cpu_ops']} of {total} ops fall back to the CPU of {where}, "
                                           f"against --require-npu: {named}", fix)


def npu_markdown(npu: dict[str, Any]) -> list[str]:
    """Vela's placement and estimates for an Ethos-U NPU, as report.md's section."""
    total = npu["npu_ops"] + npu["cpu_ops"]
    capacity = npu.get("sram_capacity_kib")
    fits = "-" if capacity is None else f"{'fits' if npu.get('fits_sram') else 'does not fit'} in {capacity:.0f} KiB"
    lines = [f"## Ethos-U: {npu['accelerator']}, {npu['system_config']}, {npu['memory_mode']} (Vela "
             f"{npu.get('vela_version', '')})", "",
             "| NPU ops | SRAM, KiB | flash, KiB | DRAM, KiB | SRAM of the memory mode | ms per inference "
             "(estimate) | cycles | MACs |", "|" + " --- |" * 8,
             f"| {npu['npu_ops']} of {total} | {npu['sram_kib']:.1f} | {npu['flash_kib']:.1f} | "
             f"{npu.get('dram_kib', 0.0):.1f} | {fits} | {npu['inference_ms']:.3f} | {npu['cycles_total']:,} | "
             f"{npu['macs']:,} |", ""]
    if npu["cpu_fallback"]:
        lines += ["Ops Vela leaves to the CPU:", "", "| op | output tensor | Vela's reason |", "| --- | --- | --- |"]
        lines += [f"| {op['op']} | `{op['name']}` | {op['reason']} {op.get('constraint', '')} |"
                  for op in npu["cpu_fallback"]]
        lines.append("")
    return lines
