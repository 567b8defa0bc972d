"""Ethos-U's part of the report: Vela's placement and estimates in report.md, and the --require-npu
check (report.json's ``target.ethos_u`` and its schema are in :mod:`.section`)."""

from __future__ import annotations

from dgh_deploy.targets.ethos_u.section import NpuSection
from dgh_deploy.verification.gate import GateCheck


def npu_check(npu: NpuSection) -> GateCheck:
    """--require-npu: every op Vela compiled on the NPU, or the ops it left to the CPU, and why."""
    vela = npu.vela
    total = vela.npu_ops + vela.cpu_ops
    where = f"{vela.accelerator} ({vela.system_config}, {vela.memory_mode})"
    fix = ("change the model so Vela can place those ops (report.json lists each, with Vela's reason), "
           "or drop --require-npu")
    if vela.cpu_ops == 0:
        return GateCheck("require_npu", True, f"PASS: all {total} ops on the NPU of {where}, as --require-npu asks",
                         fix)
    shown = [f"{op.op} '{op.name[:60]}' ({op.reason})" for op in vela.cpu_fallback[:3]]
    more = len(vela.cpu_fallback) - len(shown)
    named = ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "Vela named none"
    return GateCheck("require_npu", False, f"FAIL: {vela.cpu_ops} of {total} ops fall back to the CPU of {where}, "
                                           f"against --require-npu: {named}", fix)


def npu_markdown(npu: NpuSection) -> list[str]:
    """Vela's placement and estimates for an Ethos-U NPU, as report.md's section."""
    vela = npu.vela
    total = vela.npu_ops + vela.cpu_ops
    capacity = vela.sram_capacity_kib
    fits = "-" if capacity is None else f"{'fits' if vela.fits_sram else 'does not fit'} in {capacity:.0f} KiB"
    lines = [f"## Ethos-U: {vela.accelerator}, {vela.system_config}, {vela.memory_mode} (Vela "
             f"{vela.vela_version})", "",
             "| NPU ops | SRAM, KiB | flash, KiB | DRAM, KiB | SRAM of the memory mode | ms per inference "
             "(estimate) | cycles | MACs |", "|" + " --- |" * 8,
             f"| {vela.npu_ops} of {total} | {vela.sram_kib:.1f} | {vela.flash_kib:.1f} | "
             f"{vela.dram_kib:.1f} | {fits} | {vela.inference_ms:.3f} | {vela.cycles_total:,} | "
             f"{vela.macs:,} |", ""]
    if vela.cpu_fallback:
        lines += ["Ops Vela leaves to the CPU:", "", "| op | output tensor | Vela's reason |", "| --- | --- | --- |"]
        lines += [f"| {op.op} | `{op.name}` | {op.reason} {op.constraint} |" for op in vela.cpu_fallback]
        lines.append("")
    return lines
