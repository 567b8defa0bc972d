"""The job's scores: float against quantized, on real labelled data and data-free, on each runtime.

Every runtime scores each validation image once: when the device's runtime takes the job's own
images, the desktop runtime's answers from the job's evaluation are kept and compared with the
device's image by image, not computed again. Each scoring pass shows a progress bar (a reference
runtime on a microcontroller's kernels can take a second an image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.progress import progress_bar
from dgh_deploy.reporting.report import DeviceScores, Metrics, Scores
from dgh_deploy.runtime.base import RecordingRunner, Runner, TorchRunner


def verify(model: LoadedModel, task: Any, runner: Runner, held: CalibrationSet | None, val_data: str | None,
           val_limit: int | None = None, progress: bool = False) -> Metrics:
    """Float against quantized: on ``val_data`` when given, and data-free on the held-out images.

    When the runner's file also runs on the device's own runtime (``runner.device_runner``), the
    same checks run there too, with its agreement with the desktop runtime, under ``device``.
    """
    out = Metrics(task.metric)
    float_runner = TorchRunner(model.module)
    device = runner.device_runner
    held_out: tuple[list[Any], list[Any]] | None = None
    if held is not None and len(held):
        ref = float_runner.infer_all(held.images)
        cand = runner.infer_all(held.images)
        out.data_free = task.agreement(ref, cand)
        held_out = (ref, cand)
    recorded = None
    if val_data:
        if device is not None:  # the device scores the same images: keep the desktop's answers for it
            recorded = RecordingRunner(runner)
        out.float_scores = score(task, float_runner, model, val_data, val_limit, progress, "float (PyTorch)")
        out.quantized = score(task, recorded or runner, model, val_data, val_limit, progress)
        out.drop = round(out.float_scores[task.metric] - out.quantized[task.metric], 4)
    if device is not None:
        out.device = _verify_on_device(model, task, runner, device, held, held_out, val_data, val_limit, progress,
                                       out, recorded)
    return out


def score(task: Any, runner: Runner, model: LoadedModel, val_data: str, limit: int | None, progress: bool,
          label: str | None = None) -> Scores:
    """``task.evaluate`` of ``runner``, with a progress bar of the images it runs."""
    bar = progress_bar(None, f"scoring {label or runner.name}", progress, unit="img")
    try:
        return task.evaluate(runner if bar is None else ProgressRunner(runner, bar), model, val_data, limit)
    finally:
        if bar is not None:
            bar.close()


class ProgressRunner(Runner):
    """Another runner, advancing a progress bar by the images it runs."""

    def __init__(self, runner: Runner, bar: Any) -> None:
        self.runner, self.bar, self.name = runner, bar, runner.name

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.runner.infer(x)
        self.bar.update(len(x))
        return out


def _verify_on_device(model: LoadedModel, task: Any, runner: Runner, device: Runner, held: CalibrationSet | None,
                      held_out: tuple[list[Any], list[Any]] | None, val_data: str | None, val_limit: int | None,
                      progress: bool, desktop: Metrics, recorded: RecordingRunner | None) -> DeviceScores:
    """verify()'s checks on the device runtime: data-free against float and against the desktop
    runtime's outputs, and the real metric on at most the runtime's ``image_limit`` images."""
    out = DeviceScores(device.name, runner.name)
    if held is not None and held_out is not None:
        ref, cand = held_out
        dev = device.infer_all(held.images)
        out.data_free = task.agreement(ref, dev)
        out.data_free_agreement = task.agreement(cand, dev)
    if val_data:
        _score_on_device(out, model, task, runner, device, val_data, val_limit, progress, desktop, recorded)
    return out


def _score_on_device(out: DeviceScores, model: LoadedModel, task: Any, runner: Runner, device: Runner,
                     val_data: str, val_limit: int | None, progress: bool, desktop: Metrics,
                     recorded: RecordingRunner | None) -> None:
    """The metric on the device runtime and, on the same images, on the desktop one (the two are
    compared image by image too). When the device takes the job's own images, the desktop's score
    and outputs are the job's (``recorded`` kept them); else both, and float, run on the device's."""
    metric = task.metric
    cap = device.image_limit
    limit = min(n for n in (val_limit, cap) if n) if (val_limit or cap) else None
    on_device = RecordingRunner(device)
    q = score(task, on_device, model, val_data, limit, progress)
    f = desktop.float_scores or {}
    if q["images"] == f.get("images") and recorded is not None and desktop.quantized is not None:
        on_desktop, d = recorded, desktop.quantized
    else:
        on_desktop = RecordingRunner(runner)
        d = score(task, on_desktop, model, val_data, limit, progress)
        f = score(task, TorchRunner(model.module), model, val_data, limit, progress, "float (PyTorch)")
    dev_out, desk_out = on_device.outputs(), on_desktop.outputs()
    n = min(len(dev_out[0]), len(desk_out[0])) if dev_out and desk_out else 0  # what both kept
    out.scored, out.image_limit, out.float_scores, out.quantized, out.desktop = True, cap, f, q, d
    out.agreement = task.agreement([o[:n] for o in desk_out], [o[:n] for o in dev_out]) if n else {}
    out.drop = round(f[metric] - q[metric], 4)
    out.desktop_minus_device = round(d[metric] - q[metric], 4)
