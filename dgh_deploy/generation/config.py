"""Every setting of the image generators, with Sony MCT 2.6.1's PyTorch defaults for DGH."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from dgh_deploy.generation.precision import DEFAULT_PRECISION, resolve_precision
from dgh_deploy.generation.scales import FULL_SIZE_ONLY, Scale

# Settings that change how fast or how often, never which images come out: left out of the
# checkpoint's settings hash so that a resumed run may use another memory budget.
RUNTIME_ONLY = ("memory_mb", "checkpoint_every", "cuda_graphs", "compiled_kernels")


@dataclass(frozen=True)
class DGHConfig:
    """One generation recipe. The defaults are DGH as MCT 2.6.1 runs it in PyTorch.

    ``joint_stats``: BN statistics of the whole image set (DGH), computed exactly over chunks;
    False: each batch of ``batch_size`` images matches the BN statistics on its own (ZeroQ, BNS).
    """

    optimizer: str = "radam"  # radam | adam
    lr: float = 16.0
    scheduler: str = "plateau_reset"  # plateau_reset (MCT) | plateau (torch's ReduceLROnPlateau)
    lr_factor: float = 0.5
    min_lr: float = 1e-4
    patience: int | None = None  # None: int(iters / 50), as MCT
    output_loss_multiplier: float = 1e-5
    # What the model input is matched to and starts from (see input_prior.py): "model" is MCT's
    # mean 0 / std 1; "auto" keeps it for normalising models and uses natural-image statistics
    # for models fed raw 0..1 pixels (YOLO).
    input_prior: str = "auto"
    pipeline: bool = True  # stored images larger than the input, random crop + flip + smoothing
    extra_pixels: int | None = None  # None: 32 at 224, scaled to the input size
    smoothing_size: int = 3
    smoothing_sigma: float = 1.25
    clip: bool = True  # clip to the pixel range of 0..255 images
    # Coarse to fine (scales.py): (fraction of the input side, share of the iterations) per
    # stage; the default optimises at the full size throughout, as MCT.
    scales: tuple[Scale, ...] = FULL_SIZE_ONLY
    # The learning rate a finer stage starts at: "carry" (where the plateau schedule had brought
    # it) or "restart" (``lr`` again, as DeepInversion). YOLOv5n at 640, 16 images: restarting at
    # 16 scrambled the images (BN loss 0.37 at the end against 0.098 carried).
    stage_lr: str = "carry"
    joint_stats: bool = True
    batch_size: int = 32  # only when joint_stats is False
    std_eps: float = 1e-6
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and tensor cores
    # fp32 | bf16 | auto: bfloat16 autocast of the model's forward and backward (the images, the
    # optimiser, the statistics and the losses stay float32/float64); auto is bf16 where the
    # device has native bf16 (precision.py), the default. Resolved before a run: settings record
    # fp32 or bf16.
    precision: str = DEFAULT_PRECISION
    memory_mb: int | None = None  # activation memory a run may hold; None: chosen for the device
    checkpoint_every: int = 50  # iterations between checkpoints
    # On one GPU, capture a step's forward and backward once as a CUDA graph and replay it: at
    # CIFAR sizes the launches of several hundred small kernels, not the arithmetic, set the pace.
    cuda_graphs: bool = True
    # On a CPU, each BN layer's affine and statistics as one compiled loop each way (bn_kernels.py).
    # The same sums in the same precisions, added in another order: a set made either way serves.
    compiled_kernels: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON holds them (``scales`` as lists), so that a set's settings compare
        equal whether it was just made or read back from the cache."""
        return json.loads(json.dumps(asdict(self)))

    def hashed_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.as_dict().items() if k not in RUNTIME_ONLY}

    def resolved(self, device: str, module: nn.Module | None = None) -> DGHConfig:
        """This recipe as it runs on ``device`` for ``module``: ``precision`` fp32 or bf16, never auto,
        so that the settings, the checkpoint hash and the cache key say what actually ran."""
        return replace(self, precision=resolve_precision(self.precision, device, module))


def bns_config() -> DGHConfig:
    """Plain BN-statistics matching as ZeroQ does it: per batch of 32, no image pipeline, no
    output loss, Adam at lr 0.5 with torch's ReduceLROnPlateau (patience 100, factor 0.1)."""
    return replace(
        DGHConfig(), optimizer="adam", lr=0.5, scheduler="plateau", lr_factor=0.1, patience=100,
        output_loss_multiplier=0.0, pipeline=False, joint_stats=False, batch_size=32,
    )


def scaled_extra_pixels(imgsz: tuple[int, int]) -> int:
    """MCT's 32 extra pixels at 224, in proportion for other sizes (4 at 32x32)."""
    return int(32 * min(imgsz) / 224)


def default_recipe(source: str) -> DGHConfig:
    """The settings a job generates ``source`` (dgh or bns) with."""
    return DGHConfig() if source == "dgh" else bns_config()


def job_recipe(source: str, precision: str | None, device: str,
               scales: tuple[Scale, ...] = FULL_SIZE_ONLY, module: nn.Module | None = None) -> DGHConfig:
    """The recipe a job runs on ``device`` for ``module``: :func:`default_recipe` with ``precision``
    (None: the default), resolved, and the budget's resolution schedule. The same object builds the
    images and the cache key."""
    recipe = replace(default_recipe(source), scales=scales)
    return (recipe if precision is None else replace(recipe, precision=precision)).resolved(device, module)
