"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class DGHError(Exception):
    """A problem the user can fix. The CLI prints ``str(err)`` on one line and exits ``exit_code``."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.rstrip(". ")
        self.fix = fix.rstrip(". ")
        super().__init__(self.problem)

    def __str__(self) -> str:
        line = f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}."
        return " ".join(line.split())  # always one line


class QualityGateFailed(DGHError):
    """The quantized model lost more than ``--max-drop`` against float: distinct exit code for CI."""

    exit_code = 3


def exc_reason(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error.

    A long line is cut at its last full sentence within ``limit``, else at a word, never mid-word.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0].strip()
    if len(line) <= limit:
        return line
    head = line[:limit]
    end = head.rfind(". ")
    if end > limit // 3:
        return head[: end + 1]
    return head[: head.rfind(" ")].rstrip(",;:") + "..." if " " in head else head + "..."
