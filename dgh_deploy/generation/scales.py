"""Coarse-to-fine generation: the input size each iteration optimises the images at.

Generation costs pixels x images x iterations, and a 640-pixel detector has 4x the pixels of
a 320 one. As in DeepInversion's multi-resolution setting, most iterations can run at a
fraction of the input size, where a step costs a fraction as much; the images are then
upsampled and finished at the full size. Every stage uses the same losses (the whole set's BN
statistics, the image pipeline, the output stretch): only the size changes.

A schedule is a tuple of ``(fraction of the input side, share of the iterations)``, coarse to
fine, ending at fraction 1; written on the command line as ``0.25:0.7,0.5:0.2,1:0.1``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from dgh_deploy.errors import DGHError

Scale = tuple[float, float]  # (fraction of the input side, share of the iterations)
FULL_SIZE_ONLY: tuple[Scale, ...] = ((1.0, 1.0),)


@dataclass(frozen=True)
class Stage:
    """Iterations ``start .. stop - 1`` optimise the images for a model input of ``imgsz``."""

    imgsz: tuple[int, int]
    start: int
    stop: int

    @property
    def iters(self) -> int:
        return self.stop - self.start


def check_schedule(schedule: tuple[Scale, ...]) -> None:
    """Refuse a schedule that does not go from coarse to fine and end at the full size."""
    fix = "give fractions rising to 1 with positive shares, e.g. --scales 0.25:0.7,0.5:0.2,1:0.1"
    if not schedule:
        raise DGHError("the resolution schedule is empty", fix)
    fractions = [f for f, _ in schedule]
    if fractions[-1] != 1.0 or any(not 0 < f <= 1 for f in fractions):
        raise DGHError(f"the resolution schedule {format_schedule(schedule)} does not end at the full size", fix)
    if any(b <= a for a, b in itertools.pairwise(fractions)):
        raise DGHError(f"the resolution schedule {format_schedule(schedule)} is not coarse to fine", fix)
    if any(share <= 0 for _, share in schedule):
        raise DGHError(f"the resolution schedule {format_schedule(schedule)} has a stage without iterations", fix)


def parse_schedule(text: str) -> tuple[Scale, ...]:
    """``0.25:0.7,0.5:0.2,1:0.1`` -> ((0.25, 0.7), (0.5, 0.2), (1.0, 0.1)); ``1`` -> full size only."""
    try:
        schedule = tuple(_stage_spec(part) for part in text.split(","))
    except ValueError as exc:
        raise DGHError(f"--scales '{text}' is not a list of FRACTION:SHARE",
                       "write it as e.g. 0.25:0.7,0.5:0.2,1:0.1 (or 1 for the full size only)") from exc
    check_schedule(schedule)
    return schedule


def _stage_spec(part: str) -> Scale:
    """``FRACTION:SHARE``, or ``FRACTION`` alone (a share of 1); ValueError otherwise."""
    fraction, *share = part.split(":")
    if len(share) > 1:
        raise ValueError(part)
    return float(fraction), float(share[0]) if share else 1.0


def format_schedule(schedule: tuple[Scale, ...]) -> str:
    return ",".join(f"{f:g}:{s:g}" for f, s in schedule)


def stages(imgsz: tuple[int, int], iters: int, schedule: tuple[Scale, ...], multiple: int = 1) -> list[Stage]:
    """The stages of a run of ``iters`` iterations at ``imgsz``: each stage's side is its fraction
    of the input's, rounded to a ``multiple`` (a detector's stride), and its iterations its share
    of ``iters``. Stages that get no iteration or the size of the next are left out; the last
    stage is always the full size."""
    check_schedule(schedule)
    total = sum(share for _, share in schedule)
    out: list[Stage] = []
    start, done = 0, 0.0
    for i, (fraction, share) in enumerate(schedule):
        done += share
        stop = iters if i == len(schedule) - 1 else min(iters, round(iters * done / total))
        size = _scaled(imgsz, fraction, multiple)
        if out and out[-1].imgsz == size:  # rounding gave the size of the stage before: one stage
            start = out.pop().start
        if stop > start or i == len(schedule) - 1:
            out.append(Stage(size, start, stop))
            start = stop
    return out


def _scaled(imgsz: tuple[int, int], fraction: float, multiple: int) -> tuple[int, int]:
    if fraction == 1.0:
        return imgsz
    h, w = (max(multiple, round(side * fraction / multiple) * multiple) for side in imgsz)
    return min(h, imgsz[0]), min(w, imgsz[1])
