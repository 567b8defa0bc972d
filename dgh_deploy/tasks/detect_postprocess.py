"""Deploy-form outputs -> detections: NMS in input pixels, then back through the letterbox.

NMS is Ultralytics' own ``non_max_suppression``, so that float numbers match what Ultralytics'
validator reports for the same boxes and scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class NMSConfig:
    """Validation defaults: conf 0.001, IoU 0.6, 300 boxes. ``multi_label``: one box may carry every
    class scoring above ``conf`` (as Ultralytics' and YOLOv5's validators do; mAP about 0.5-2 points
    higher); off, each box keeps its best class only (what a deployed model usually reports)."""

    conf: float = 0.001
    iou: float = 0.6
    max_det: int = 300
    multi_label: bool = False


def nms(
    boxes: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, imgsz: tuple[int, int], cfg: NMSConfig
) -> list[torch.Tensor]:
    """Normalised ``cx cy w h`` boxes (N x 4 x A) and scores (N x nc x A) -> per image k x 6
    (x1 y1 x2 y2 in input pixels, score, class)."""
    import torchvision  # noqa: F401  (Ultralytics uses its C++ NMS only when torchvision is imported: 5x faster)
    from ultralytics.utils.nms import non_max_suppression

    b = torch.as_tensor(np.asarray(boxes, np.float32))
    s = torch.as_tensor(np.asarray(scores, np.float32))
    h, w = imgsz
    pred = torch.cat((b * torch.tensor([w, h, w, h], dtype=torch.float32).view(1, 4, 1), s), 1)
    # max_time_img: Ultralytics stops NMS (dropping the remaining images of the batch) after a time
    # limit meant for GPUs; a busy 2-core CPU must not silently lose images.
    return non_max_suppression(
        pred, cfg.conf, cfg.iou, multi_label=cfg.multi_label, max_det=cfg.max_det, max_time_img=60.0
    )


def unletterbox(
    det: torch.Tensor, imgsz: tuple[int, int], ratio: float, pad: tuple[float, float], orig_hw: tuple[int, int],
    clip: bool = True,
) -> torch.Tensor:
    """Boxes of ``det`` from the letterboxed input back to original image pixels, clipped to it unless
    ``clip`` is off (Ultralytics' 8.4 validator scores unclipped boxes, in the letterboxed input)."""
    from ultralytics.utils.ops import scale_boxes

    det = det.clone()
    if clip:
        det[:, :4] = scale_boxes(imgsz, det[:, :4], orig_hw, ratio_pad=((ratio, ratio), pad))
    else:  # scale_boxes' own mapping, without its final clip
        det[:, [0, 2]] = (det[:, [0, 2]] - pad[0]) / ratio
        det[:, [1, 3]] = (det[:, [1, 3]] - pad[1]) / ratio
    return det
