"""Task adapters: what a task contributes to generation (the stretched outputs) and to checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dgh_deploy.tasks.base import TaskAdapter

if TYPE_CHECKING:
    from dgh_deploy.loaded_model import LoadedModel


def get_task(name: str, model: LoadedModel | None = None) -> TaskAdapter:
    """The adapter for task ``name``; given the ``model``, its data-free check reads that model's outputs
    (a detector that decodes on the host needs its own decode)."""
    if name == "classify":
        from dgh_deploy.tasks.classify import ClassifyTask

        return ClassifyTask()
    if name == "detect":
        from dgh_deploy.tasks.detect import DetectTask

        return DetectTask(model=model)
    from dgh_deploy.errors import DGHError

    raise DGHError(f"unknown task '{name}'", "use classify or detect")


__all__ = ["TaskAdapter", "get_task"]
