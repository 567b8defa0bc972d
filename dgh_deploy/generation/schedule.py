"""Learning-rate schedule on a loss plateau, with MCT's reset of the best value."""

from __future__ import annotations

import math
from typing import Any

import torch


class PlateauSchedule:
    """Halve (``factor``) the learning rate after ``patience`` steps without a relative
    improvement of 1e-4, down to ``min_lr``.

    ``reset=True`` is MCT's ReduceLROnPlateauWithReset: after each reduction the best loss is
    forgotten, so the next reduction waits for a full plateau at the new rate. ``reset=False``
    behaves as torch's ReduceLROnPlateau (what ZeroQ uses).
    """

    threshold = 1e-4

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float, patience: int, min_lr: float,
                 reset: bool) -> None:
        self.optimizer = optimizer
        self.factor, self.patience, self.min_lr, self.reset = factor, patience, min_lr, reset
        self.best = math.inf
        self.bad_steps = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, loss: float) -> None:
        if loss < self.best * (1.0 - self.threshold):
            self.best = loss
            self.bad_steps = 0
        else:
            self.bad_steps += 1
        if self.bad_steps > self.patience:
            for group in self.optimizer.param_groups:
                new = max(group["lr"] * self.factor, self.min_lr)
                if group["lr"] - new > 1e-8:
                    group["lr"] = new
            self.bad_steps = 0
            if self.reset:
                self.best = math.inf

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_steps = float(state["best"]), int(state["bad_steps"])
