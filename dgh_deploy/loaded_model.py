"""The model as every stage sees it: a float32 module in eval mode, its task, input size and preprocessing.

:func:`dgh_deploy.loading.load_model` makes one from what the user names; generation, targets,
tasks and reports only read it.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.preprocessing import Preprocessing


@dataclass
class LoadedModel:
    """A float32 model in eval mode on the CPU, with everything needed to feed it."""

    module: nn.Module
    name: str
    task: str
    imgsz: tuple[int, int]
    preprocessing: Preprocessing
    weights: str | None = None
    class_names: tuple[str, ...] | None = None
    export_form: Callable[[nn.Module], nn.Module] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of the weights and input geometry: the key for cached calibration sets."""
        h = hashlib.sha256(f"{self.name}|{self.task}|{self.imgsz}|{self.preprocessing}".encode())
        for k, v in sorted(self.module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def for_export(self) -> nn.Module:
        """A copy of the model with the export rewrites applied (the original stays untouched)."""
        module = copy.deepcopy(self.module).eval()
        return self.export_form(module) if self.export_form else module

    def dummy_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 3, *self.imgsz)


def check_accepts_images(model: LoadedModel) -> None:
    """One forward pass on a blank image: catches non-image models and wrong sizes early."""
    h, w = model.imgsz
    if h < 1 or w < 1:
        raise DGHError(f"image size {h}x{w} is not valid", "pass a positive --imgsz")
    try:
        with torch.no_grad():
            model.module(model.dummy_input())
    except Exception as exc:
        reason = exc_reason(exc, 160)
        raise DGHError(
            f"model '{model.name}' does not take a 1x3x{h}x{w} image ({reason})",
            "check --imgsz, or that the model is an image model with 3 input channels",
        ) from exc


def count_bn_layers(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def require_batchnorm(model: LoadedModel, why: str) -> None:
    if count_bn_layers(model.module) == 0:
        raise DGHError(
            f"model '{model.name}' has no BatchNorm layer, which {why} needs",
            "use --calib real:PATH or --calib noise, or a model with BatchNorm (fold nothing before export)",
        )
