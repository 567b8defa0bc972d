"""YOLO detectors in deploy form, and Ultralytics loading without any download.

A deploy-form detector (:class:`YoloDeploy`) is one module whose ``forward`` returns exactly what
the int8 artifact will output: boxes ``cx, cy, w, h`` divided by the input width/height, and
scores as probabilities, laid out as its :class:`~dgh_deploy.tasks.detect_layout.DetectLayout`
says. It implements the detector protocol (:mod:`dgh_deploy.tasks.detector`): ``head_maps`` returns
the head's raw per-level maps (box regression or DFL logits, class logits, objectness), before any
sigmoid or decoding: what DGH stretches; ``decode`` turns them into boxes and scores. Unlike a
user's detector, its ``forward`` may decode inside the graph (``forward(x) = pack(decode(head_maps(x)))``);
with the ``maps`` layout it ends at the raw maps instead and :meth:`YoloDeploy.decode_outputs`
decodes a file's outputs on the host, as a user's detector is decoded.

Two head families share the Ultralytics backbone/neck layers (``model.0`` ... ``model.{n-1}``,
run with Ultralytics' own ``f``/``i`` routing): Ultralytics' anchor-free ``Detect`` (YOLOv5u,
v8, 11: :class:`UltralyticsDetector`) and the classic anchor-based YOLOv5 head
(:mod:`dgh_deploy.models.yolov5`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgh_deploy.checkpoints import checkpoint_problem, extract_state_dict, load_state, read_checkpoint
from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Preprocessing
from dgh_deploy.tasks.detect_layout import DetectLayout
from dgh_deploy.tasks.detector import Array, decode_on_host

YOLO_PREPROCESSING = Preprocessing(resize="letterbox", pad_value=114)  # pixels / 255, no mean/std
DEFAULT_IMGSZ = 640
YAML_INIT_SEED = 0
NO_HEAD_FIX = "use an Ultralytics detection .pt/.yaml (Detect head) or the built-in yolov5n"


class YoloDeploy(nn.Module):
    """Ultralytics layers (head last) -> deploy-form outputs. Subclasses implement the head."""

    input_size = DEFAULT_IMGSZ  # the protocol's trained size: Ultralytics' and YOLOv5's default

    def __init__(self, layers: nn.Sequential, save: Iterable[int], strides: list[int], layout: DetectLayout) -> None:
        super().__init__()
        self.model = layers  # keeps Ultralytics' parameter names: model.0..., head = model.<last>
        self.save = sorted(set(save) | {j for j in _from(self.head) if j != -1})
        self.strides = [int(s) for s in strides]
        self.detect_layout = layout
        # Grid constants per input geometry; plain attributes (not buffers) so they stay out of
        # state_dict and the fingerprint, and become constants in an exported graph.
        self._grids: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}

    @property
    def head(self) -> nn.Module:
        return self.model[-1]

    @property
    def max_stride(self) -> int:
        return max(self.strides)

    @property
    def nc(self) -> int:
        return self.detect_layout.nc

    @property
    def num_classes(self) -> int:
        return self.nc

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The head's inputs, one per level (Ultralytics' ``_predict_once`` routing)."""
        y: list[torch.Tensor | None] = []
        for m in list(self.model.children())[:-1]:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return [x if j == -1 else y[j] for j in _from(self.head)]  # type: ignore[misc]

    def check_size(self, x: torch.Tensor) -> None:
        if not isinstance(x.shape[-1], int):  # symbolic (torch.fx tracing, as MCT does): nothing to check
            return
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of the model's stride {self.max_stride}")

    def head_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw head maps per level (N x C x h x w, or N x na x k x h x w for anchor heads), before sigmoid
        or decoding: for DGH."""
        self.check_size(x)
        return self.head_raw(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self.check_size(x)
        if self.detect_layout.maps:  # the file ends here; decode_outputs decodes on the host
            return tuple(self.export_maps(self.features(x)))
        boxes, scores, obj = self.decode_features(self.features(x), (int(x.shape[-2]), int(x.shape[-1])))
        return self.detect_layout.pack(boxes, scores, obj)

    def head_raw(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def export_maps(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The raw maps a ``maps`` file outputs, N x C x h x w each (4-D, which converters lay out
        cleanly), in the order :meth:`decode` takes them."""
        return self.head_raw(feats)

    def decode_outputs(self, outputs: Sequence[Array], imgsz: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``maps`` file's outputs (float, or dequantized int8) -> (boxes N x 4 x A, final scores N x nc x A)."""
        return decode_on_host(self.decode, outputs, imgsz)

    def map_meanings(self, imgsz: tuple[int, int]) -> list[str]:
        """What each output of a ``maps`` file holds and how device code decodes it, in output order."""
        raise NotImplementedError

    def decode(
        self, maps: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``head_maps``' maps -> boxes N x 4 x A (normalised cx cy w h), class probabilities N x nc x A,
        objectness N x 1 x A or None."""
        raise NotImplementedError

    def decode_features(
        self, feats: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`decode` from the head's inputs: what ``forward`` runs (a head may decode its inputs in a
        form that converts better than the maps it gives DGH)."""
        return self.decode(self.head_raw(feats), size)


class UltralyticsDetector(YoloDeploy):
    """Ultralytics' anchor-free ``Detect`` head: DFL box distances (``cv2``) and class logits (``cv3``)."""

    def __init__(self, layers: nn.Sequential, save: Iterable[int], layout: DetectLayout | None = None) -> None:
        head = layers[-1]
        super().__init__(layers, save, [int(s) for s in head.stride.tolist()], layout or DetectLayout(int(head.nc)))

    def head_raw(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        h = self.head
        # End-to-end heads (YOLOv10/26) also carry one-to-one branches; the one-to-many ones
        # (cv2/cv3) are trained alongside and are decoded with NMS like every other YOLO.
        return [t for i, f in enumerate(feats) for t in (h.cv2[i](f), h.cv3[i](f))]

    def decode(
        self, maps: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raw = maps
        box = torch.cat([r.flatten(2) for r in raw[0::2]], 2)
        # Sigmoid per level, then join: TFLite's concatenation forces one int8 scale on everything it
        # joins, and sigmoid outputs all have the fixed scale 1/256 (raw logits of three levels do not).
        cls = torch.cat([r.sigmoid().flatten(2) for r in raw[1::2]], 2)
        dist = self.head.dfl(box)  # N x 4 x A: left, top, right, bottom in stride units
        centre, scale = self._grid(raw[0::2], size)
        lt, rb = dist.chunk(2, 1)
        xy = (centre + (rb - lt) * 0.5) * scale
        wh = (lt + rb) * scale
        return torch.cat((xy, wh), 1), cls, None

    def map_meanings(self, imgsz: tuple[int, int]) -> list[str]:
        bins = int(getattr(self.head.dfl, "c1", 16))
        out = []
        for s in self.strides:
            cells = f"stride {s}, {imgsz[0] // s} x {imgsz[1] // s} cells"
            out += [f"box distances, {4 * bins} channels ({cells}): per side (left, top, right, bottom) "
                    f"{bins} bins; softmax over the bins, their expectation (bin index weighted) is the side's "
                    f"distance from the cell centre in strides: box = centre -/+ distance, times {s} px",
                    f"class logits, {self.nc} channels ({cells}): sigmoid gives the scores"]
        return out

    def _grid(self, feats: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Cell centres in grid units (1 x 2 x A) and stride / (W, H) per anchor (1 x 2 x A)."""
        ref = feats[0]
        key = (size, tuple(tuple(f.shape[-2:]) for f in feats), ref.device, ref.dtype)
        if key not in self._grids:
            centres, scales = [], []
            for f, s in zip(feats, self.strides, strict=True):
                h, w = int(f.shape[-2]), int(f.shape[-1])
                gy, gx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
                centres.append(torch.stack((gx.flatten(), gy.flatten())))
                scales.append(torch.tensor([s / size[1], s / size[0]]).view(2, 1).expand(2, h * w))
            self._grids[key] = tuple(
                torch.cat(t, 1)[None].to(ref.device, ref.dtype) for t in (centres, scales)
            )
        return self._grids[key]


def deploy_form_of(module: nn.Module) -> nn.Module | None:
    """``module`` as a deploy-form detector: itself (a built-in or a loaded protocol detector, with
    ``head_maps``), a wrapped Ultralytics DetectionModel, or None."""
    if isinstance(module, YoloDeploy) or callable(getattr(module, "head_maps", None)):
        return module
    layers = getattr(module, "model", None)
    if isinstance(layers, nn.Sequential) and len(layers) and _is_detect_head(layers[-1]):
        return UltralyticsDetector(layers, getattr(module, "save", []))
    return None


def _is_detect_head(m: nn.Module) -> bool:
    return all(getattr(m, a, None) is not None for a in ("cv2", "cv3", "dfl", "stride", "nc", "f"))


def _from(m: nn.Module) -> list[int]:
    f = m.f
    return [f] if isinstance(f, int) else list(f)


def load_ultralytics(spec: str, weights: str | None = None) -> LoadedModel:
    """An Ultralytics ``.pt`` checkpoint, or a model YAML (a path, or a name Ultralytics ships)."""
    if spec.endswith(".pt"):
        path = Path(spec)
        if not path.is_file():
            raise DGHError(f"model file '{spec}' not found", "check the --model path")
        if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else would reach pickle
            raise DGHError(f"cannot read Ultralytics checkpoint '{spec}' (it is not a PyTorch checkpoint)",
                           "pass a .pt saved by Ultralytics (model.save / a training run)")
        from ultralytics.nn.tasks import load_checkpoint

        try:
            module, _ = load_checkpoint(str(path), device="cpu", inplace=True, fuse=False)
        except Exception as exc:
            raise DGHError(
                f"cannot read Ultralytics checkpoint '{spec}' ({checkpoint_problem(exc)})",
                "pass a .pt saved by Ultralytics (model.save / a training run)",
            ) from exc
    else:
        from ultralytics.nn.tasks import DetectionModel

        if not Path(spec).is_file() and not _ships_yaml(spec):
            raise DGHError(f"model YAML '{spec}' not found", "pass a YAML path or a name Ultralytics ships")
        try:
            # Built under a fixed seed: a yaml without weights is then one model, not a new random one
            # per process, so a job, its resume and the images cached for it all see the same weights.
            with torch.random.fork_rng():
                torch.manual_seed(YAML_INIT_SEED)
                module = DetectionModel(cfg=spec, verbose=False)
        except Exception as exc:
            raise DGHError(f"cannot build a model from '{spec}' ({exc_reason(exc, 120)})", "check the YAML") from exc
        if weights:
            load_state(module, extract_state_dict(read_checkpoint(weights), weights), weights, spec)
    return loaded_ultralytics(module, Path(spec).stem, weights or (spec if spec.endswith(".pt") else None))


def loaded_ultralytics(module: nn.Module, name: str, weights: str | None = None) -> LoadedModel:
    """An Ultralytics DetectionModel (from a file, or a user's own object) as the model every stage reads."""
    module = module.float().eval()
    task = getattr(module, "task", "detect")
    if task != "detect":
        raise DGHError(f"'{name}' is an Ultralytics {task} model", "only detection models are supported")
    deploy = deploy_form_of(module)
    if deploy is None:
        layers = getattr(module, "model", None)
        last = type(layers[-1]).__name__ if isinstance(layers, nn.Sequential) and len(layers) else "none"
        raise DGHError(f"the detection adapter found no detection head in '{name}' (its last layer is {last})",
                       NO_HEAD_FIX)
    names = getattr(module, "names", None)
    return LoadedModel(
        module=deploy.eval(), name=name, task="detect", imgsz=(DEFAULT_IMGSZ, DEFAULT_IMGSZ),
        preprocessing=YOLO_PREPROCESSING, weights=weights,
        class_names=tuple(names.values()) if isinstance(names, dict) else None,
        extra={"stride": deploy.max_stride},
    )


def _ships_yaml(name: str) -> bool:
    try:
        from ultralytics.nn.tasks import yaml_model_load

        yaml_model_load(name)
        return True
    except Exception:
        return False
