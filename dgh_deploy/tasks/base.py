"""The task-adapter interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.runtime.base import Runner


class TaskAdapter(ABC):
    name: str
    metric: str  # the headline metric, higher is better (e.g. "top1", "mAP50-95")
    # How far above the calibration set's largest value an integer output's range reaches (its
    # top times this): room for inputs more extreme than the set's. 1: the set's range.
    output_headroom: float = 1.0

    @abstractmethod
    def stretch_outputs(self, output: Any) -> list[torch.Tensor]:
        """The raw tensors whose per-image range DGH's distribution-stretching loss widens.

        ``output`` is what the model's forward returns while generating (train-free, eval
        mode). Raise :class:`~dgh_deploy.errors.DGHError` if no output layer is found.
        """

    def prepare_for_generation(self, model: LoadedModel) -> torch.nn.Module:
        """The module DGH differentiates through (detectors may return raw head outputs)."""
        return model.module

    @abstractmethod
    def evaluate(self, runner: Runner, model: LoadedModel, val_data: str, limit: int | None = None) -> dict[str, float]:
        """The task metric of ``runner`` on real labelled data (``metric`` among the keys)."""

    def check_val_data(self, val_data: str) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~dgh_deploy.errors.DGHError` early if ``val_data`` is unusable."""

    def sample_inputs(self, model: LoadedModel, val_data: str, n: int) -> np.ndarray | None:
        """Up to ``n`` real inputs (model input space) for range comparisons; None if not supported."""
        return None

    def output_meanings(self, model: LoadedModel, layout: str) -> list[str]:
        """What each output of the deployed file holds, in output order (the report's input contract);
        ``layout`` is the target's output layout (``split`` or ``ultralytics`` for detectors)."""
        return []

    @abstractmethod
    def agreement(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
        """Data-free check: how closely a quantized model's outputs follow the float model's."""
