"""Deploy-form outputs -> detections: NMS in input pixels; back through the letterbox on request.

NMS is Ultralytics' own ``non_max_suppression``, so that float numbers match what Ultralytics'
validator reports for the same boxes and scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dgh_deploy.preprocessing import Placement


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


def unletterbox(det: torch.Tensor, placement: Placement, clip: bool = True) -> torch.Tensor:
    """Boxes of ``det`` from the letterboxed input back to original image pixels, clipped to the
    image unless ``clip`` is off (what a deployed detector reports). Scoring needs none of this:
    like Ultralytics' validator, :class:`~dgh_deploy.tasks.detect.DetectTask` scores in input pixels."""
    det = det.clone()
    xyxy = placement.clip(det[:, :4].numpy()) if clip else det[:, :4].numpy()
    det[:, :4] = torch.from_numpy(placement.to_original(xyxy))
    return det


def clip_to_image(det: torch.Tensor, placement: Placement) -> torch.Tensor:
    """Boxes of ``det`` (input pixels) cut at the edges of the image on the canvas."""
    det = det.clone()
    det[:, :4] = torch.from_numpy(placement.clip(det[:, :4].numpy()))
    return det
