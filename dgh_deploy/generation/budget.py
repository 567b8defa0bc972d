"""The default generation budget: images x iterations x resolution schedule, from the model's
task and input size and the device, before anything runs.

The rule depends on nothing measured, so the same command makes the same images (and hits the
same cache entry) on any machine of the same precision (``--precision auto``, the default, is bf16
where the hardware has it: precision.py); the measured time is printed beside it before generation
starts (``Generator.announce``). Sizes the project's quality tables were measured at keep
their budgets: CIFAR classifiers 256 x 500, detectors up to 320 pixels 64 x 200 on a CPU.
Larger inputs on a CPU run coarse to fine (:mod:`scales`): most iterations at a side near
``COARSE_SIDE``, the rest on the way up to the full size.
"""

from __future__ import annotations

from dataclasses import dataclass

from dgh_deploy.generation.scales import FULL_SIZE_ONLY, Scale, format_schedule
from dgh_deploy.loaded_model import LoadedModel

# Inputs up to this side run at the full size throughout (the sizes the quality tables hold).
FULL_SIZE_SIDE = {"detect": 320, "classify": 64}
# The coarsest stage's side: small enough that a step costs a sixteenth of a 640 one, large
# enough that a detector's stride-32 map is still 5x5 and a classifier's last map 4x4.
COARSE_SIDE = {"detect": 160, "classify": 112}
# Shares of the iterations, coarse to fine, for a schedule of two or three sizes.
SHARES = {2: (0.8, 0.2), 3: (0.7, 0.2, 0.1)}


@dataclass(frozen=True)
class Budget:
    n_images: int
    iters: int
    scales: tuple[Scale, ...] = FULL_SIZE_ONLY
    basis: str = ""  # why: one line for the console and the report

    def describe(self) -> str:
        schedule = "" if self.scales == FULL_SIZE_ONLY else f", coarse to fine {format_schedule(self.scales)}"
        return f"{self.n_images} images x {self.iters} iterations{schedule}"


def default_budget(model: LoadedModel, device: str) -> Budget:
    """Classifiers 256 x 500; detectors 64 x 200 on a CPU, 128 x 500 on a GPU. On a CPU, an input
    larger than the task's ``FULL_SIZE_SIDE`` runs coarse to fine from about ``COARSE_SIDE``
    pixels, and a classifier of that size gets 128 x 200 (its step costs what a detector's does)."""
    side, task = min(model.imgsz), model.task
    if str(device).startswith("cuda"):
        n, iters = (128, 500) if task == "detect" else (256, 500)
        return Budget(n, iters, basis=f"the GPU default for a {task} model")
    scales = coarse_to_fine(side, COARSE_SIDE[task]) if side > FULL_SIZE_SIDE[task] else FULL_SIZE_ONLY
    if scales == FULL_SIZE_ONLY:
        n, iters = (64, 200) if task == "detect" else (256, 500)
        return Budget(n, iters, basis=f"the CPU default for a {task} model of {side} pixels")
    n, iters = (64, 200) if task == "detect" else (128, 200)
    return Budget(n, iters, scales, basis=f"the CPU default for a {task} model of {side} pixels: "
                                          f"coarse to fine from {round(side * scales[0][0])}")


def coarse_to_fine(side: int, coarse_side: int) -> tuple[Scale, ...]:
    """Halvings of ``side`` down to the first at or below ``coarse_side`` (two or three sizes),
    with :data:`SHARES` of the iterations."""
    fractions = [1.0]
    while side * fractions[0] / 2 >= coarse_side * 0.75 and len(fractions) < 3:
        fractions.insert(0, fractions[0] / 2)
    if len(fractions) == 1:
        return FULL_SIZE_ONLY
    return tuple(zip(fractions, SHARES[len(fractions)], strict=True))
