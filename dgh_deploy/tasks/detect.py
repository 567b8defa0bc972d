"""Detection: raw head maps are stretched; mAP on an Ultralytics data YAML is the metric.

The deploy form's outputs (normalised boxes and scores, see :mod:`.detect_layout`) are decoded,
passed through Ultralytics' NMS, mapped back through the letterbox and scored with Ultralytics'
metric code, so the float numbers are the ones Ultralytics reports and any runner's outputs
(float or dequantized int8) are scored the same way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Placement, letterbox, open_image, stretch
from dgh_deploy.runtime.base import Runner, flatten_outputs
from dgh_deploy.tasks.base import TaskAdapter
from dgh_deploy.tasks.classify import evenly_spaced
from dgh_deploy.tasks.detect_data import DetectionData, read_data_yaml
from dgh_deploy.tasks.detect_layout import infer_layout, layout_of
from dgh_deploy.tasks.detect_postprocess import NMSConfig, clip_to_image, nms
from dgh_deploy.tasks.detector import PROTOCOL_FIX, decodes_on_host, final_scores
from dgh_deploy.verification.layers import sqnr_db

NO_HEAD = "the detection adapter found no detection head"
# Data-free agreement compares what a deployed detector would report: Ultralytics' predict defaults.
AGREEMENT_NMS = NMSConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)


class RawHeadOutputs(nn.Module):
    """The module DGH differentiates through: the deploy form's raw per-level head maps.

    It shares (does not copy) the detector's layers, so hooks on its BatchNorm layers see them.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.detector.head_maps(x)


class DetectTask(TaskAdapter):
    """``nms``: the validation NMS (single-label by default; ``NMSConfig(multi_label=True)`` for
    Ultralytics' validator setting). ``batch_size``: images per ``runner.infer`` call. ``clip``: boxes
    clipped to the image before scoring (as a deployed detector reports them; Ultralytics' validator
    does not clip)."""

    name = "detect"
    metric = "mAP50-95"

    def __init__(self, nms: NMSConfig | None = None, batch_size: int = 8, clip: bool = True,
                 model: LoadedModel | None = None) -> None:
        self.nms = nms or NMSConfig()
        self.clip = clip
        self.batch_size = batch_size
        self.model = model  # whose outputs the data-free check reads (a host-decoded detector's maps need it)
        self._loaded: dict[tuple, tuple[DetectionData, np.ndarray, np.ndarray, list[Placement]]] = {}

    # -- generation --------------------------------------------------------------------------

    def prepare_for_generation(self, model: LoadedModel) -> nn.Module:
        from dgh_deploy.models.yolo import deploy_form_of

        detector = deploy_form_of(model.module)
        if detector is None:
            raise DGHError(f"{NO_HEAD} in '{model.name}' ({type(model.module).__name__})", PROTOCOL_FIX)
        return RawHeadOutputs(detector).eval()

    def stretch_outputs(self, output: Any) -> list[torch.Tensor]:
        """Every raw head map (class logits, box/DFL logits, objectness), each widened on its own."""
        tensors = [t for t in flatten_outputs(output) if t.is_floating_point() and t.ndim >= 3]
        if not tensors:
            raise DGHError(f"{NO_HEAD} (the model returned no N x C x ... head maps)", PROTOCOL_FIX)
        return tensors

    def output_meanings(self, model: LoadedModel, layout: str) -> list[str]:
        from dgh_deploy.runtime.base import TorchRunner

        outputs = TorchRunner(model.module).infer(model.dummy_input().numpy())
        back = ("scale boxes back by each axis' own factor" if model.preprocessing.resize == "stretch"
                else "map boxes back through the letterbox")
        after = f"then keep scores >= a threshold and run NMS per class (IoU {self.nms.iou:g}), and {back}"
        if decodes_on_host(model.module):
            own = getattr(model.module, "map_meanings", None)  # a built-in head says how to decode it
            if own is None:
                return host_decode_meanings([o.shape for o in outputs], model.imgsz, after)
            meanings = own(model.imgsz)
            return [*meanings[:-1], f"{meanings[-1]}; {after}"]
        parts = layout_of(model.module, outputs)
        nc = parts.nc
        if layout == "ultralytics":
            return [f"N x (4 + {nc}) x anchors: cx, cy, w, h in input pixels, then {nc} class probabilities; "
                    "Ultralytics' YOLO(file) decodes it"]
        merged = "" if parts.objectness else ", objectness multiplied in"
        meanings = {
            "boxes": "N x 4 x anchors: cx, cy, w, h of each anchor's box, divided by the input width and height",
            "objectness": "N x 1 x anchors: objectness probability; multiply into the class scores",
            "scores": f"N x {nc} x anchors: class probabilities (sigmoid applied{merged}); {after}",
        }
        return [meanings[name] for name in parts.names]

    # -- real labelled data ------------------------------------------------------------------

    def evaluate(self, runner: Runner, model: LoadedModel, val_data: str, limit: int | None = None) -> dict[str, float]:
        """mAP of ``runner`` on the ``val`` split of the data YAML ``val_data``.

        Returns ``mAP50-95``, ``mAP50``, ``precision``, ``recall`` in points (0..100: Ultralytics'
        0.334 is reported as 33.4, like top-1 for classifiers, so drops read in points) and
        ``images``. NMS follows ``self.nms`` (conf 0.001, IoU 0.6, 300 boxes, single-label).
        """
        from dgh_deploy.tasks.detect_metrics import MapAccumulator

        data, index, canvases, placements = self._load(model, val_data, limit)
        cfg = self._nms_for(data, index)
        acc = MapAccumulator(data.names)
        for i in range(0, len(index), self.batch_size):
            outputs = runner.infer(model.preprocessing.normalise(canvases[i : i + self.batch_size]))
            boxes, scores = _final(deploy_parts(model.module, outputs, model.imgsz))
            if scores.shape[1] != len(data.names):
                raise DGHError(
                    f"model '{model.name}' predicts {scores.shape[1]} classes but '{val_data}' names "
                    f"{len(data.names)}", "evaluate on data labelled with the model's own classes",
                )
            for j, det in enumerate(nms(boxes, scores, model.imgsz, cfg)):
                k, placement = int(index[i + j]), placements[i + j]
                lab = data.labels[k]
                # Scored in input pixels, labels moved onto the canvas, as Ultralytics' validator scores.
                det = clip_to_image(det, placement) if self.clip else det
                acc.add(det, lab[:, 0], placement.labels_to_input(lab[:, 1:5]), data.images[k].name)
        return acc.result()

    def _nms_for(self, data: DetectionData, index: np.ndarray) -> NMSConfig:
        """``self.nms``, its box cap raised to the most labelled objects in one image where that is
        more: Ultralytics' validator raises its default cap so, else recall is capped below 100%."""
        most = max((len(data.labels[int(k)]) for k in index), default=0)
        return replace(self.nms, max_det=most) if most > self.nms.max_det else self.nms

    def check_val_data(self, val_data: str) -> None:
        """Fail fast on a bad data YAML (before hours of generation), with the same errors as evaluate."""
        read_data_yaml(val_data, "val")

    def _load(self, model: LoadedModel, val_data: str, limit: int | None) -> tuple[DetectionData, np.ndarray,
                                                                                   np.ndarray, list[Placement]]:
        """Letterbox once per (data, size, preprocessing): float and quantized runs share the uint8 canvases."""
        pre = model.preprocessing
        if pre.resize not in ("letterbox", "stretch"):
            raise DGHError(
                f"detection evaluation scores letterboxed or stretched inputs, but '{model.name}' resizes by "
                f"{pre.resize}", "give the detector resize='letterbox' or 'stretch'",
            )
        key = (str(val_data), limit, model.imgsz, pre)
        if key not in self._loaded:
            data = read_data_yaml(val_data, "val")
            index = evenly_spaced(len(data.images), limit)
            canvases = np.empty((len(index), *model.imgsz, 3), np.uint8)  # uint8: a quarter of float32
            placements = []
            for n, k in enumerate(index):
                rgb = np.asarray(open_image(data.images[k]))  # upright as yolo val reads it: labels follow EXIF
                canvases[n], placement = (letterbox(rgb, model.imgsz, pre.pad_value) if pre.resize == "letterbox"
                                          else stretch(rgb, model.imgsz))
                placements.append(placement)
            self._loaded = {key: (data, index, canvases, placements)}  # keep one set: they can be large
        return self._loaded[key]

    # -- data-free -----------------------------------------------------------------------------

    def agreement(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
        """Float (``reference``) vs quantized (``candidate``) deploy outputs on the same images.

        ``<part>_sqnr_db``: signal-to-quantization-noise of boxes, scores (and objectness), in dB;
        then box-level agreement after NMS at deployment settings (conf 0.25, IoU 0.7): see
        :func:`~dgh_deploy.tasks.detect_metrics.box_agreement`.
        """
        from dgh_deploy.tasks.detect_metrics import box_agreement

        ref_parts, cand_parts = self._parts(reference), self._parts(candidate)
        out = {f"{name}_sqnr_db": sqnr_db(np.asarray(ref_parts[name]), np.asarray(cand_parts[name]))
               for name in ref_parts}
        imgsz = (1, 1)  # boxes stay normalised: IoU does not change with per-axis scaling
        ref_det = nms(*_final(ref_parts), imgsz, AGREEMENT_NMS)
        cand_det = nms(*_final(cand_parts), imgsz, AGREEMENT_NMS)
        out.update(box_agreement(ref_det, cand_det))
        out["images"] = float(len(reference[0]))
        return out

    def _parts(self, outputs: list[np.ndarray]) -> dict[str, Any]:
        """:func:`deploy_parts` of the bound model (unbound: the layout the outputs have)."""
        if self.model is None:
            return infer_layout(outputs).parts(outputs)
        return deploy_parts(self.model.module, outputs, self.model.imgsz)


def _final(parts: dict[str, Any]) -> tuple[Any, Any]:
    return final_scores((parts["boxes"], parts["scores"], parts.get("objectness")))


def host_decode_meanings(shapes: list[tuple[int, ...]], imgsz: tuple[int, int], after: str) -> list[str]:
    """What each raw map of a host-decoded detector's file holds, and how device code decodes them."""
    n = len(shapes)
    first = (f"dequantize all {n} maps, lay each out as PyTorch's N x C x H x W, and decode them together with the "
             f"detector's decode(maps, {imgsz}) into boxes and class scores; {after}")
    return [f"raw head map {i + 1} of {n} (PyTorch shape {'x'.join(map(str, shape))}), before any sigmoid or "
            f"softmax: " + (first if i == 0 else "decoded with the others (see the first output)")
            for i, shape in enumerate(shapes)]


def deploy_parts(module: nn.Module, outputs: list[np.ndarray], imgsz: tuple[int, int]) -> dict[str, Any]:
    """A runner's outputs of ``module``'s deploy form -> {part: N x C x A} (boxes normalised, scores and,
    where the layout keeps it apart, objectness): decoded on the host for a protocol detector or the
    ``maps`` layout, as its layout packs them for one that decodes in its graph."""
    if decodes_on_host(module):
        boxes, scores = module.decode_outputs(outputs, imgsz)
        return {"boxes": boxes, "scores": scores}
    return layout_of(module, outputs).parts(outputs)
