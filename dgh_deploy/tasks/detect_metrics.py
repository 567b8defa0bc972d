"""Detection metrics with Ultralytics' own code: box IoU, prediction matching and ``DetMetrics``.

mAP50-95 computed here is exactly what Ultralytics' ``DetectionValidator`` would report for the
same detections and labels (both in the same pixels: the validator's, and ours, are input pixels).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # COCO's, as Ultralytics' validator uses


def match_detections(det: torch.Tensor, gt_cls: torch.Tensor, gt_boxes: torch.Tensor,
                     thresholds: torch.Tensor = IOU_THRESHOLDS) -> np.ndarray:
    """Which detections (k x 6, sorted by score) are true positives at each IoU threshold: k x T bool."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import box_iou

    if len(det) == 0 or len(gt_cls) == 0:
        return np.zeros((len(det), len(thresholds)), dtype=bool)
    iou = box_iou(gt_boxes, det[:, :4])
    # match_predictions only reads self.iouv: call Ultralytics' greedy matcher itself rather than a copy.
    stub = SimpleNamespace(iouv=thresholds)
    return BaseValidator.match_predictions(stub, det[:, 5], gt_cls, iou).cpu().numpy()  # type: ignore[arg-type]


class MapAccumulator:
    """Collects per-image detections and labels; :meth:`result` runs Ultralytics' ``DetMetrics``."""

    def __init__(self, names: tuple[str, ...]) -> None:
        from ultralytics.utils.metrics import DetMetrics

        self.metrics = DetMetrics(names=dict(enumerate(names)))
        self.images = 0

    def add(self, det: torch.Tensor, gt_cls: np.ndarray, gt_boxes: np.ndarray, image_name: str) -> None:
        """``det``: k x 6 (x1 y1 x2 y2 score class); ``gt_boxes``: m x 4 x1 y1 x2 y2, same pixels."""
        cls_t = torch.as_tensor(gt_cls, dtype=torch.float32)
        tp = match_detections(det, cls_t, torch.as_tensor(gt_boxes, dtype=torch.float32))
        self.metrics.update_stats({
            "tp": tp,
            "conf": det[:, 4].numpy(),
            "pred_cls": det[:, 5].numpy(),
            "target_cls": np.asarray(gt_cls, np.float32),
            "target_img": np.unique(gt_cls),
            "im_name": image_name,
        })
        self.images += 1

    def result(self) -> dict[str, float]:
        """mAP50-95, mAP50, precision and recall in points (0..100), Ultralytics' numbers x 100."""
        self.metrics.process()
        p, r, map50, map5095 = self.metrics.mean_results()
        return {"mAP50-95": 100.0 * float(map5095), "mAP50": 100.0 * float(map50),
                "precision": 100.0 * float(p), "recall": 100.0 * float(r), "images": float(self.images)}


def box_agreement(reference: list[torch.Tensor], candidate: list[torch.Tensor], iou: float = 0.5) -> dict[str, float]:
    """How well one model's detections reproduce another's, image by image.

    A candidate box agrees when it has the class of a not-yet-matched reference box and IoU >= ``iou``
    with it (Ultralytics' greedy matcher, the reference standing in for the labels).
    ``detection_agreement`` is 2 x matched / (reference + candidate boxes), 100 when identical;
    ``matched_mean_iou`` is the mean IoU of matched boxes with their best same-class reference box.
    """
    from ultralytics.utils.metrics import box_iou

    matched, n_ref, n_cand, ious = 0, 0, 0, []
    thr = torch.tensor([iou])
    for ref, cand in zip(reference, candidate, strict=True):
        n_ref, n_cand = n_ref + len(ref), n_cand + len(cand)
        hit = match_detections(cand, ref[:, 5], ref[:, :4], thr)[:, 0]
        matched += int(hit.sum())
        if hit.any():
            same = (ref[:, 5:6] == cand[hit][:, 5]).float().T  # candidates x references
            ious += (box_iou(cand[hit][:, :4], ref[:, :4]) * same).max(1).values.tolist()
    total = n_ref + n_cand
    return {
        "detection_agreement": 100.0 if total == 0 else 200.0 * matched / total,
        "matched_mean_iou": float(np.mean(ious)) if ious else 0.0,
        "reference_detections": float(n_ref),
        "candidate_detections": float(n_cand),
    }
