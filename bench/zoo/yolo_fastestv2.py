"""Yolo-FastestV2 (dog-qiuqiu, COCO, 352x352): a real non-Ultralytics detector through the detector protocol.

Use as ``--model bench/zoo/yolo_fastestv2.py:build``. The network and the trained weights are the
authors' own, read from a checkout of https://github.com/dog-qiuqiu/Yolo-FastestV2 outside this
repository (``$YOLO_FASTESTV2_DIR``, else ``../zoo/Yolo-FastestV2`` beside the project): nothing is
copied here and nothing is downloaded. Only the protocol is ours: the maps the authors' ``forward``
returns (box regression, objectness and class logits at strides 16 and 32, before any activation)
and a decode written from their ``utils.handel_preds`` and ``data/coco.data``:

* box: per anchor (3 per level, anchor-major channels), ``xy = (2 sigmoid - 0.5 + cell) * stride``,
  ``wh = (2 sigmoid)^2 * anchor`` (anchors in pixels at 352);
* objectness: sigmoid, one per anchor; classes: softmax over the 80 classes, one map shared by
  the level's three anchors; final score = objectness x class probability.

Input as their ``test.py`` and ``evaluation.py`` feed it: OpenCV's BGR pixels, ``cv2.resize`` to
352x352 (aspect ratio not kept), divided by 255.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
REPO_URL = "https://github.com/dog-qiuqiu/Yolo-FastestV2"
WEIGHTS = Path("modelzoo") / "coco2017-0.241078ap-model.pth"
# data/coco.data: pixels at 352x352, three anchors per level, stride 16 then 32.
ANCHORS = ((12.64, 19.39, 37.88, 51.48, 55.71, 138.31), (126.91, 78.23, 131.57, 214.55, 279.92, 258.87))
NUM_ANCHORS = 3


def checkout() -> Path:
    """The authors' repository checkout (FileNotFoundError naming where it was looked for)."""
    path = Path(os.environ.get("YOLO_FASTESTV2_DIR", ROOT.parent / "zoo" / "Yolo-FastestV2"))
    if not (path / "model" / "detector.py").is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"no Yolo-FastestV2 checkout at {path}: clone {REPO_URL} there "
                                "(or set YOLO_FASTESTV2_DIR)")
    return path


def authors_detector_class(repo: Path) -> type[nn.Module]:
    """``model.detector.Detector`` from the checkout (its backbone file imports ``torchsummary``, for a
    summary it never prints: a stand-in module keeps that import from failing)."""
    sys.modules.setdefault("torchsummary", types.SimpleNamespace(summary=None))  # type: ignore[arg-type]
    checkout_package("model", repo)
    from model.detector import Detector  # type: ignore[import-not-found]

    return Detector


def checkout_package(name: str, repo: Path) -> None:
    """The checkout's top-level folder ``name`` as the package ``name`` (the authors' modules import each
    other as ``model.fpn``, ``utils.utils``), found through the package's own path, not ``sys.path``."""
    if name in sys.modules:
        return
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(repo / name)]
    sys.modules[name] = importlib.util.module_from_spec(spec)


def protocol_class(detector: type[nn.Module]) -> type[nn.Module]:
    """The authors' ``Detector`` with the protocol added (a subclass: their state_dict keys still fit)."""

    class YoloFastestV2(detector):  # type: ignore[misc, valid-type]
        num_classes = 80
        strides = (16, 32)
        input_size = 352
        channel_order = "BGR"
        resize = "stretch"
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

        def head_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
            return list(super().forward(x))  # reg, obj, cls at stride 16, then at 32: raw

        def decode(self, maps: list[torch.Tensor], input_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
            return decode_maps(maps, input_hw)

    return YoloFastestV2


def decode_maps(maps: list[torch.Tensor], input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The six maps -> boxes N x 4 x A (normalised cx cy w h), class probabilities N x 80 x A, objectness
    N x 1 x A; anchors ordered level, anchor, cell."""
    h_in, w_in = input_hw
    boxes, scores, objectness = [], [], []
    for level, (reg, obj, cls) in enumerate(zip(maps[0::3], maps[1::3], maps[2::3], strict=True)):
        n, _, gh, gw = reg.shape
        stride = h_in / gh  # as the authors compute it, from the height
        gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        cell = torch.stack((gx, gy)).flatten(1).to(reg.dtype)  # 2 x gh*gw
        r = reg.view(n, NUM_ANCHORS, 4, gh * gw).sigmoid()
        anchors = torch.tensor(ANCHORS[level], dtype=reg.dtype).view(NUM_ANCHORS, 2, 1)
        xy = (r[:, :, :2] * 2 - 0.5 + cell) * stride  # N x na x 2 x cells
        wh = (r[:, :, 2:] * 2) ** 2 * anchors
        norm = torch.tensor([w_in, h_in, w_in, h_in], dtype=reg.dtype).view(1, 1, 4, 1)
        boxes.append((torch.cat((xy, wh), 2) / norm).permute(0, 2, 1, 3).flatten(2))
        objectness.append(obj.view(n, NUM_ANCHORS, 1, gh * gw).sigmoid().permute(0, 2, 1, 3).flatten(2))
        probs = cls.flatten(2).softmax(1)  # N x 80 x cells, shared by the level's anchors
        scores.append(probs.repeat(1, 1, NUM_ANCHORS))
    return torch.cat(boxes, 2), torch.cat(scores, 2), torch.cat(objectness, 2)


def build() -> nn.Module:
    """Yolo-FastestV2 with the authors' COCO weights, as a protocol detector."""
    return _built(protocol_class(authors_detector_class(checkout())))


def build_with_authors_decode() -> nn.Module:
    """The same network, decoded by the authors' own ``utils.utils.handel_preds`` (their code, run from the
    checkout): the reference the protocol's decode is held to."""
    repo = checkout()
    base = protocol_class(authors_detector_class(repo))
    checkout_package("utils", repo)
    from utils.utils import handel_preds, load_datafile  # type: ignore[import-not-found]

    cfg = load_datafile(str(repo / "data" / "coco.data"))

    class AuthorsDecode(base):  # type: ignore[misc, valid-type]
        def decode(self, maps: list[torch.Tensor], input_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
            # handel_preds: N x A x (cx, cy, w, h in pixels, objectness, 80 class probabilities)
            out = handel_preds(maps, {**cfg, "height": input_hw[0], "width": input_hw[1]}, "cpu").float()
            h, w = input_hw
            boxes = out[..., :4] / torch.tensor([w, h, w, h], dtype=out.dtype)
            return boxes.transpose(1, 2), out[..., 5:].transpose(1, 2), out[..., 4:5].transpose(1, 2)

    return _built(AuthorsDecode)


def _built(cls: type[nn.Module]) -> nn.Module:
    repo = checkout()
    with contextlib.redirect_stdout(io.StringIO()):  # their constructor prints "load param..."
        net = cls(80, NUM_ANCHORS, True)  # True: the backbone's weights come with the model's, not from cwd
    net.load_state_dict(torch.load(repo / WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval()
