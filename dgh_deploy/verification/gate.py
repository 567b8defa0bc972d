"""The job's pass/fail checks for CI: ``--max-drop`` (accuracy) and the target's own (placement...).

Each check is judged on its own and carries its own fix, so a failed job's one line tells the
user what to change for the check that failed, and JUnit shows one test case per check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dgh_deploy.errors import DGHError
from dgh_deploy.reporting.report import GateCheckEntry, GateEntry, Metrics


@dataclass(frozen=True)
class GateCheck:
    name: str  # the JUnit test case: "max_drop[1.0]", or a target's check
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

    def entry(self, max_drop: float | None) -> GateEntry:
        """What report.json keeps of it (``report.gate``)."""
        return GateEntry(max_drop, self.passed, self.verdict,
                         [GateCheckEntry(c.name, c.passed, c.verdict) for c in self.checks])


def gate_verdict(metrics: Metrics, max_drop: float | None, target_checks: Sequence[GateCheck] = ()) -> \
        GateVerdict | None:
    """The target's own checks (those its options asked for) and ``--max-drop``'s, or None when none was asked for.

    ``--max-drop`` reads the device runtime's metric when the job measured one.
    """
    checks = list(target_checks)
    if max_drop is not None:
        checks.append(drop_check(metrics, max_drop))
    return GateVerdict(tuple(checks)) if checks else None


def drop_check(m: Metrics, max_drop: float) -> GateCheck:
    """--max-drop: the quantized model's metric against float, on the device runtime when measured."""
    if m.drop is None or m.float_scores is None or m.quantized is None:
        raise DGHError("--max-drop needs real labelled data to measure a drop", "pass --val-data")
    metric, where = m.metric, ""
    drop, flt, quantized = m.drop, m.float_scores, m.quantized
    dev = m.device
    if dev is not None and dev.drop is not None and dev.float_scores and dev.quantized:
        drop, flt, quantized = dev.drop, dev.float_scores, dev.quantized
        where = f" on {dev.runtime} ({int(quantized.get('images', 0))} images)"
    detail = (f"{metric} {flt[metric]:.2f} float -> {quantized[metric]:.2f} quantized{where}, "
              f"drop {drop:.2f} points")
    name, fix = f"max_drop[{max_drop}]", "calibrate with more or better images, or relax --max-drop"
    if drop > max_drop:
        return GateCheck(name, False, f"FAIL: {detail}, more than --max-drop {max_drop}", fix)
    return GateCheck(name, True, f"PASS: {detail}, within --max-drop {max_drop}", fix)
