"""What every observer shares: the interface, the range type, array conversion and the percentile check.

An observer sees a tensor's values batch by batch (numpy arrays or torch tensors alike) and then
says the range ``(lo, hi)`` that tensor is quantized over. Most look at the data once; one that
needs the extremes before it can bin (a histogram) looks ``passes`` times, told which look by
:meth:`Observer.begin_pass`, as the targets' calibrators feed the calibration set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dgh_deploy.errors import DGHError

if TYPE_CHECKING:
    import torch

Range = tuple[float, float]  # (lo, hi) of one tensor


class Observer(ABC):
    """One tensor's statistics over a calibration set, and the range they give."""

    passes: int = 1  # looks at the set before :meth:`range` can answer

    def begin_pass(self, index: int) -> None:
        """Called before each look (``index`` from 0 to ``passes - 1``); nothing by default."""
        return None

    @abstractmethod
    def observe(self, x: Any) -> None:
        """See one batch of the tensor (a numpy array or a torch tensor)."""

    @abstractmethod
    def range(self) -> Range:
        """The range ``(lo, hi)`` from everything observed."""


def observe_all(observer: Observer, batches: Sequence[Any]) -> Range:
    """Feed ``batches`` to ``observer`` in every look it takes; its range."""
    for index in range(observer.passes):
        observer.begin_pass(index)
        for batch in batches:
            observer.observe(batch)
    return observer.range()


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x`` (a torch tensor is detached and brought to the CPU first)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_torch(x: Any) -> torch.Tensor:
    """A torch view of ``x`` (numpy arrays share their memory)."""
    import torch

    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def check_percentile(percentile: float) -> None:
    """Refuse a percentile no range can be read at: the share of values a range keeps, in (50, 100]."""
    if not 50.0 < percentile <= 100.0:
        raise DGHError(f"--percentile {percentile:g} is outside (50, 100]",
                       "pass the share of values the range keeps, e.g. --percentile 99.99")


def with_headroom(rng: Range, headroom: float) -> Range:
    """``rng`` with its top ``headroom`` times as far from zero: room above what the calibration set
    reached (a task's integer outputs, see ``TaskAdapter.output_headroom``). A top at or below zero
    stays: there is no headroom to give it without moving the zero."""
    lo, hi = rng
    return (lo, hi * headroom) if hi > 0 else (lo, hi)
