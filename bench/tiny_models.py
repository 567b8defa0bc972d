"""Tiny models for checks that need no assets: the GPU check here, and the generation, baseline and
sim tests (tests/test_generation_models.py re-exports them). Torch is imported on use, so that
importing a bench module stays cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from dgh_deploy.loaded_model import LoadedModel


def tiny_bn_net(seed: int = 0, with_bn: bool = True) -> nn.Module:
    """Conv-BN-ReLU x2 with a residual-free head; BN running stats set away from (0, 1)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    bn = (lambda c: nn.BatchNorm2d(c)) if with_bn else (lambda c: nn.Identity())
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), bn(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def as_loaded(module: nn.Module, imgsz: tuple[int, int] = (16, 16), name: str = "tiny") -> LoadedModel:
    from dgh_deploy.loaded_model import LoadedModel
    from dgh_deploy.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    return LoadedModel(module=module.eval(), name=name, task="classify", imgsz=imgsz,
                       preprocessing=Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD))
