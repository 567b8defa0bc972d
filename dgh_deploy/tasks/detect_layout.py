"""The output layout of a detector's deploy form: the one place that packs and unpacks it.

Every deploy-form detector returns tensors of shape N x C x anchors whose boxes are
``cx, cy, w, h`` divided by the input width/height, and whose scores are probabilities. Both
then live in about 0..1, so a per-tensor int8 scale fits them (pixels up to 640 next to [0, 1]
scores would leave the scores two or three int8 steps). The model packs; the task adapter and
any runner's outputs are unpacked here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dgh_deploy.errors import DGHError

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class DetectLayout:
    """``split`` (default): boxes and scores as separate outputs, each with its own int8 scale, instead
    of one ``N x (4 + nc) x anchors`` tensor. ``objectness``: YOLOv5's objectness as its own output
    (multiplied into the class scores after dequantization) instead of multiplied in by the model.

    Why split, objectness multiplied in: YOLOv5n on coco128 val with only the outputs quantized
    (per-tensor asymmetric int8, ranges from 64 train2017 images), mAP50-95 float -> int8:
    at 320 one tensor 27.37 -> 27.11, split 27.36, split with objectness 27.05; at 640 one tensor
    33.08 -> 32.32, split 32.39, split with objectness 32.59. Boxes reach ~1.2 (w, h beyond the
    image), so sharing their scale coarsens the scores; a separate objectness is no better on
    balance and would give the two head families different layouts. Pixel boxes in one tensor
    with the scores: 6.77 at 320.

    ``maps``: the graph ends before the decode, at the head's raw maps (one output per level and
    part, each with its own int8 scale), which the host decodes in float (``split`` and
    ``objectness`` then say nothing). Decoded boxes at int8 keep a step of ~1/200 of the image
    and scores none below 1/256, which mAP50-95 at 640 feels: YOLOv5n, GPTQ weights, DGH mse
    ranges, 3 seeds, 32.06 / 32.35 / 32.14 with maps against 31.62 / 31.72 / 30.97 split
    (float 33.08). Arm's embedded examples decode YOLO on the Cortex-M the same way.
    """

    nc: int
    split: bool = True
    objectness: bool = False
    maps: bool = False

    def __post_init__(self) -> None:
        # Kept unambiguous: the outputs alone then say the layout (the data-free check sees only those).
        if self.objectness and not self.split:
            raise ValueError("a separate objectness needs split outputs (boxes, objectness, scores)")

    @property
    def names(self) -> tuple[str, ...]:
        """The parts, in output/channel order."""
        return ("boxes", "objectness", "scores") if self.objectness else ("boxes", "scores")

    def widths(self) -> tuple[int, ...]:
        return (4, 1, self.nc) if self.objectness else (4, self.nc)

    def describe(self) -> str:
        if self.maps:
            return "the raw head maps, one output per level and part, decoded on the host"
        dims = " + ".join(("4", "1", str(self.nc)) if self.objectness else ("4", str(self.nc)))
        if self.split:
            return ", ".join(f"{n} N x {w} x anchors" for n, w in zip(self.names, self.widths(), strict=True))
        return f"one tensor N x ({dims}) x anchors ({', '.join(self.names)})"

    def pack(
        self, boxes: torch.Tensor, scores: torch.Tensor, obj: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The model side: normalised boxes, class probabilities and (YOLOv5) objectness -> outputs."""
        if obj is not None and not self.objectness:
            scores = scores * obj
        parts = (boxes, obj, scores) if self.objectness else (boxes, scores)
        if any(p is None for p in parts):
            raise ValueError("this layout keeps objectness separate, but the model gave none")
        return tuple(parts) if self.split else torch.cat(parts, 1)  # type: ignore[arg-type]

    def parts(self, outputs: Sequence[Array]) -> dict[str, Array]:
        """Runner outputs (in the model's output order) -> {part name: N x C x anchors}."""
        if self.maps:
            raise DGHError("raw head maps are decoded by their model, not unpacked by a layout",
                           "decode them with the model's decode_outputs (tasks/detect.py's deploy_parts)")
        outputs = list(outputs)
        widths = self.widths()
        if self.split:
            shapes_ok = len(outputs) == len(widths) and all(
                o.ndim == 3 and o.shape[1] == w for o, w in zip(outputs, widths, strict=False)
            )
            parts = outputs
        else:
            shapes_ok = len(outputs) == 1 and outputs[0].ndim == 3 and outputs[0].shape[1] == sum(widths)
            edges = np.cumsum((0, *widths))
            parts = [outputs[0][:, a:b] for a, b in itertools.pairwise(edges)] if shapes_ok else []
        if not shapes_ok:
            got = ", ".join("x".join(map(str, o.shape)) for o in outputs) or "nothing"
            raise DGHError(
                f"the detector's outputs have shapes {got}, not the deploy layout: {self.describe()}",
                "run the model's own deploy form (LoadedModel.module / for_export()), with outputs in its order",
            )
        return dict(zip(self.names, parts, strict=True))

    def unpack(self, outputs: Sequence[Array]) -> tuple[Array, Array]:
        """Runner outputs -> (boxes N x 4 x anchors, final scores N x nc x anchors)."""
        p = self.parts(outputs)
        scores = p["scores"] * p["objectness"] if self.objectness else p["scores"]
        return p["boxes"], scores


def ultralytics_layout(nc: int) -> DetectLayout:
    """Ultralytics' own detector output: one N x (4 + nc) x anchors tensor of boxes then final class
    scores. Its LiteRT backend multiplies the boxes by the input width/height, so in a .tflite they
    stay normalised, as in our deploy form."""
    return DetectLayout(nc=nc, split=False)


def repack(outputs: Sequence[Array], src: DetectLayout, dst: DetectLayout) -> list[np.ndarray]:
    """Outputs in layout ``src`` -> the same values in layout ``dst`` (float32 arrays)."""
    if dst.objectness and not src.objectness:
        raise ValueError("cannot recover a separate objectness from scores it was multiplied into")
    p = src.parts(outputs)
    parts = [p["boxes"], p["objectness"], p["scores"]] if dst.objectness else list(src.unpack(outputs))
    arrays = [np.asarray(t, np.float32) for t in parts]
    return arrays if dst.split else [np.concatenate(arrays, 1)]


def infer_layout(outputs: Sequence[Array]) -> DetectLayout:
    """The layout that ``outputs`` (in order) have: one N x (4 + nc) x A tensor, or the split forms."""
    shapes = [tuple(o.shape) for o in outputs]
    if all(len(s) == 3 for s in shapes) and len({(s[0], s[2]) for s in shapes}) == 1:
        channels = [s[1] for s in shapes]
        if len(channels) == 1 and channels[0] > 4:
            return DetectLayout(nc=channels[0] - 4, split=False)
        if len(channels) == 2 and channels[0] == 4:
            return DetectLayout(nc=channels[1])
        if len(channels) == 3 and channels[:2] == [4, 1]:
            return DetectLayout(nc=channels[2], split=True, objectness=True)
    raise DGHError(
        f"the detection adapter found no detection head (outputs {shapes} are not N x (4 + classes) x anchors, "
        "nor boxes N x 4 x anchors with scores)",
        "load the detector as an Ultralytics .pt/.yaml or a built-in detector (yolov5n)",
    )


def layout_of(module: torch.nn.Module, outputs: Sequence[Array]) -> DetectLayout:
    """The layout a deploy-form module declares; for a foreign module, the one its outputs have."""
    layout = getattr(module, "detect_layout", None)
    return layout if isinstance(layout, DetectLayout) else infer_layout(outputs)
