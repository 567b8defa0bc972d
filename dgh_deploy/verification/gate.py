"""The job's pass/fail checks for CI: ``--max-drop`` (accuracy) and ``--require-npu`` (placement).

Each check is judged on its own and carries its own fix, so a failed job's one line tells the
user what to change for the check that failed, and JUnit shows one test case per check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dgh_deploy.errors import DGHError


@dataclass(frozen=True)
class GateCheck:
    name: str  # the JUnit test case: "max_drop[1.0]", "require_npu"
    passed: bool
    verdict: str  # one line, "PASS: ..." or "FAIL: ..."
    fix: str  # what to change when it fails


@dataclass(frozen=True)
class GateVerdict:
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def verdict(self) -> str:
        """The failed checks' verdicts, or every check's when all passed."""
        return "; ".join(c.verdict for c in (self.failed or self.checks))

    @property
    def fix(self) -> str:
        return "; or ".join(c.fix for c in self.failed)

    def as_dict(self, max_drop: float | None) -> dict[str, Any]:
        """``report["gate"]``."""
        return {"max_drop": max_drop, "passed": self.passed, "verdict": self.verdict,
                "checks": [{k: v for k, v in asdict(c).items() if k != "fix"} for c in self.checks]}


def gate_verdict(report: dict[str, Any], max_drop: float | None) -> GateVerdict | None:
    """The checks ``--max-drop`` and ``--require-npu`` ask for, or None when neither was asked for.

    ``--max-drop`` reads the device runtime's metric (TFLite Micro) when the job measured one.
    """
    npu = report["target"].get("ethos_u", {})
    checks = []
    if npu.get("require_npu"):
        checks.append(npu_check(npu))
    if max_drop is not None:
        checks.append(drop_check(report["metrics"], max_drop))
    return GateVerdict(tuple(checks)) if checks else None


def drop_check(m: dict[str, Any], max_drop: float) -> GateCheck:
    """--max-drop: the quantized model's metric against float, on the device runtime when measured."""
    if "drop" not in m:
        raise DGHError("--max-drop needs real labelled data to measure a drop", "pass --val-data")
    metric, scores, where = m["metric"], m, ""
    if "drop" in m.get("device", {}):
        scores = m["device"]
        where = f" on {scores['runtime']} ({int(scores['quantized'].get('images', 0))} images)"
    detail = (f"{metric} {scores['float'][metric]:.2f} float -> {scores['quantized'][metric]:.2f} quantized{where}, "
              f"drop {scores['drop']:.2f} points")
    name, fix = f"max_drop[{max_drop}]", "calibrate with more or better images, or relax --max-drop"
    if scores["drop"] > max_drop:
        return GateCheck(name, False, f"FAIL: {detail}, more than --max-drop {max_drop}", fix)
    return GateCheck(name, True, f"PASS: {detail}, within --max-drop {max_drop}", fix)


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
