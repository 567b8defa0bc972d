"""Task adapters: what a task contributes to generation (the stretched outputs) and to checks."""

from __future__ import annotations

from dgh_deploy.tasks.base import TaskAdapter


def get_task(name: str) -> TaskAdapter:
    if name == "classify":
        from dgh_deploy.tasks.classify import ClassifyTask

        return ClassifyTask()
    if name == "detect":
        from dgh_deploy.tasks.detect import DetectTask

        return DetectTask()
    from dgh_deploy.errors import DGHError

    raise DGHError(f"unknown task '{name}'", "use classify or detect")


__all__ = ["TaskAdapter", "get_task"]
