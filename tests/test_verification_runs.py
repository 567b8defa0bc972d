"""How often verification runs each runtime on the validation images (fast: fake runtimes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Preprocessing
from dgh_deploy.runtime.base import Runner
from dgh_deploy.tasks.classify import ClassifyTask
from dgh_deploy.verification.scoring import verify

VAL = np.random.default_rng(0).normal(size=(20, 3, 4, 4)).astype(np.float32)


class CountingRunner(Runner):
    """A runtime that answers with a fixed linear map and counts the images it ran."""

    def __init__(self, name: str, flip: bool = False, image_limit: int | None = None) -> None:
        self.name, self.flip, self.image_limit, self.images = name, flip, image_limit, 0

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        self.images += len(x)
        logits = x.reshape(len(x), -1)[:, :3]
        return [-logits if self.flip else logits]


class FakeTask(ClassifyTask):
    """Scores top-1 against the float model's argmax on ``VAL`` (the first ``limit`` images)."""

    def evaluate(self, runner: Runner, model: LoadedModel, val_data: str, limit: int | None = None) -> dict[str, float]:
        x = VAL[:limit]
        labels = x.reshape(len(x), -1)[:, :3].argmax(1)
        pred = runner.infer_all(x, batch_size=8)[0].argmax(1)
        return {"top1": float((pred == labels).mean() * 100), "images": len(x)}


class FirstThree(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3]


@pytest.mark.parametrize(("cap", "desktop_runs"), [(None, 20), (2000, 20), (10, 30)])
def test_the_desktop_runtime_scores_the_device_images_once(cap: int | None, desktop_runs: int) -> None:
    """The device (TFLite Micro) scores the job's own images: the desktop's answers on them are
    reused, not computed again; only a device capped below the job's images needs a second run."""
    model = LoadedModel(module=FirstThree(), name="three", task="classify", imgsz=(4, 4), preprocessing=Preprocessing())
    desktop, device = CountingRunner("litert"), CountingRunner("micro", flip=True, image_limit=cap)
    desktop.device_runner = device
    out = verify(model, FakeTask(), desktop, None, "fake", progress=True)
    assert desktop.images == desktop_runs
    assert device.images == min(20, cap or 20)
    dev = out.device
    assert dev is not None and dev.desktop is not None and dev.quantized is not None and dev.agreement is not None
    assert dev.desktop["top1"] == 100.0 and dev.quantized["top1"] == 0.0  # each runtime's own answers
    assert dev.agreement["top1_agreement"] == 0.0 and dev.desktop_minus_device == 100.0
    assert dev.float_scores is not None and dev.float_scores["images"] == dev.quantized["images"]
