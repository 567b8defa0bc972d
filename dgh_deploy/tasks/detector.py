"""The detector protocol: what any ``nn.Module`` states to be deployed as a detector.

A detector is an ``nn.Module`` (from ``file.py:factory`` or passed as an object) with:

* ``num_classes`` (int) and ``strides`` (its head levels' strides; the input sides must be
  multiples of the largest);
* ``input_size``: int or (height, width), the size it was trained at;
* ``head_maps(x) -> list[Tensor]``: its raw head maps (``N x C x H x W``), before any sigmoid,
  softmax or decoding. DGH stretches their range, and the int8 graph ends with them;
* ``decode(maps, input_hw) -> (boxes, scores)`` or ``(boxes, scores, objectness)``: the maps (as
  ``head_maps`` returned them, or dequantized from the int8 file) to boxes ``N x 4 x A`` (``cx, cy,
  w, h`` divided by the input width and height), class probabilities ``N x num_classes x A`` and,
  if it has one, objectness ``N x 1 x A`` (multiplied into the scores). It runs in float32 on the
  host, outside the int8 graph, so it may use any op.

and optionally the preprocessing it was trained with: ``channel_order`` (``"RGB"`` or ``"BGR"``),
``resize`` (``"letterbox"``, the default, or ``"stretch"``), ``pad_value`` (114), ``mean`` and
``std`` (on 0..1 pixels, default 0 and 1) and ``class_names``.

The project's own detectors (:class:`~dgh_deploy.models.yolo.YoloDeploy`: the YOLOv5 anchor head
and Ultralytics' anchor-free head) implement the same protocol; they also decode inside the graph
(their decoding was measured to survive int8, see :class:`~dgh_deploy.tasks.detect_layout.DetectLayout`),
which a user's detector does not need to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Preprocessing

REQUIRED = ("num_classes", "strides", "input_size", "head_maps", "decode")
METHODS = ("head_maps", "decode")
PROTOCOL_FIX = ("give the module num_classes, strides, input_size, head_maps(x) and decode(maps, input_hw): "
                "see the README's 'Your own detector'")
Array = np.ndarray | torch.Tensor


def states_detector(module: nn.Module) -> bool:
    """Whether ``module`` means to be a detector: it names a protocol method, or ``task = "detect"``."""
    return any(callable(getattr(module, m, None)) for m in METHODS) or getattr(module, "task", None) == "detect"


def missing_parts(module: nn.Module) -> list[str]:
    """The protocol's parts ``module`` lacks (methods must be callable)."""
    return [a for a in REQUIRED if (not callable(getattr(module, a, None)) if a in METHODS
                                    else getattr(module, a, None) is None)]


class HostDecodeDetector(nn.Module):
    """A protocol detector's deploy form: its graph ends at the raw head maps, decoded on the host.

    ``forward`` returns the maps (what the int8 file outputs, each with its own scale);
    :meth:`decode_outputs` turns a runner's outputs (float, or dequantized int8) into boxes and scores.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.strides = [int(s) for s in detector.strides]
        self.nc = int(detector.num_classes)

    @property
    def max_stride(self) -> int:
        return max(self.strides)

    def head_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.detector.head_maps(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.head_maps(x))

    def decode_outputs(self, outputs: Sequence[Array], imgsz: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Runner outputs (the maps, in order) -> (boxes N x 4 x A, final scores N x nc x A)."""
        return decode_on_host(self.detector.decode, outputs, imgsz)


def decode_on_host(decode: Any, outputs: Sequence[Array], imgsz: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A file's raw maps (float, or dequantized int8; in output order) through a detector's
    ``decode(maps, imgsz)`` -> (boxes N x 4 x A, final scores N x nc x A)."""
    maps = [torch.as_tensor(np.asarray(o, np.float32)) for o in outputs]
    with torch.no_grad():
        return final_scores(decode(maps, imgsz))


def decodes_on_host(module: nn.Module) -> bool:
    """Whether ``module``'s graph ends at raw head maps (a protocol detector, or a built-in one with
    the ``maps`` layout): a runner's outputs then go through its ``decode_outputs``."""
    layout = getattr(module, "detect_layout", None)
    return isinstance(module, HostDecodeDetector) or bool(getattr(layout, "maps", False))


def final_scores(decoded: Sequence[Any]) -> tuple[Any, Any]:
    """``decode``'s (boxes, scores[, objectness]) -> (boxes, scores with the objectness multiplied in);
    tensors or arrays, objectness None where the head has none."""
    boxes, scores, *rest = decoded
    objectness = rest[0] if rest else None
    return boxes, scores if objectness is None else scores * objectness


def load_detector(net: nn.Module, name: str, weights: str | None) -> LoadedModel:
    """A user's protocol detector as the model every stage reads; an incomplete one is refused in one line."""
    missing = missing_parts(net)
    if missing:
        raise DGHError(f"'{name}' is not a complete detector: it has no {', '.join(missing)}", PROTOCOL_FIX)
    size = net.input_size
    imgsz = (size, size) if isinstance(size, int) else tuple(size)
    names = getattr(net, "class_names", None)
    module = HostDecodeDetector(net.float().eval()).eval()
    loaded = LoadedModel(
        module=module, name=name, task="detect", imgsz=imgsz,  # type: ignore[arg-type]
        preprocessing=detector_preprocessing(net, name), weights=weights,
        class_names=tuple(names) if names else None, extra={"stride": module.max_stride},
    )
    check_decode(loaded)
    return loaded


def detector_preprocessing(net: nn.Module, name: str) -> Preprocessing:
    try:
        return Preprocessing(
            mean=tuple(getattr(net, "mean", (0.0, 0.0, 0.0))), std=tuple(getattr(net, "std", (1.0, 1.0, 1.0))),
            resize=getattr(net, "resize", "letterbox"), pad_value=int(getattr(net, "pad_value", 114)),
            channel_order=str(getattr(net, "channel_order", "RGB")).upper(),
        )
    except DGHError as exc:
        raise DGHError(f"'{name}' states its preprocessing wrongly: {exc.problem}", exc.fix) from exc


def check_decode(model: LoadedModel) -> None:
    """One blank image through ``head_maps`` and ``decode``: shapes as the protocol says, or one line why not."""
    module: HostDecodeDetector = model.module  # type: ignore[assignment]
    h, w = model.imgsz
    try:
        with torch.no_grad():
            maps = module.head_maps(model.dummy_input())
            decoded = module.detector.decode([m.float() for m in maps], (h, w))
    except Exception as exc:
        raise DGHError(f"'{model.name}' fails on a 1x3x{h}x{w} image in head_maps or decode ({exc_reason(exc, 160)})",
                       "check input_size and decode(maps, input_hw)") from exc
    problem = decode_problem(maps, decoded, module.nc)
    if problem:
        raise DGHError(f"'{model.name}' {problem}", PROTOCOL_FIX)


def decode_problem(maps: Any, decoded: Any, nc: int) -> str | None:
    """What is wrong with ``head_maps``' and ``decode``'s results, if anything."""
    if not isinstance(maps, Sequence) or not maps or not all(isinstance(m, torch.Tensor) and m.ndim == 4
                                                              for m in maps):
        return "head_maps must return a list of N x C x H x W tensors"
    if not isinstance(decoded, Sequence) or len(decoded) not in (2, 3):
        return "decode must return (boxes, scores) or (boxes, scores, objectness)"
    decoded = [t for t in decoded if t is not None]
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in decoded]
    if any(s is None or len(s) != 3 for s in shapes) or len({s[2] for s in shapes}) != 1:  # type: ignore[index]
        return f"decode returned shapes {shapes}, not N x 4 x A, N x num_classes x A[, N x 1 x A]"
    widths = [s[1] for s in shapes]  # type: ignore[index]
    if widths[:2] != [4, nc] or widths[2:] not in ([], [1]):
        return f"decode returned {widths} channels, not 4 (boxes), {nc} (num_classes) and optionally 1 (objectness)"
    return None
