"""The classic anchor-based YOLOv5 (v6.x) detector on Ultralytics' own backbone/neck blocks.

The backbone and neck (``model.0`` ... ``model.23``) are the layers Ultralytics builds from its
``yolov5n.yaml`` (same classes, names and shapes as the original YOLOv5 release); only the head
is added here: three 1x1 convs (``model.24.m.{0,1,2}``, anchors x (5 + nc) outputs) on strides
8/16/32 and the ``model.24.anchors`` buffer in stride units. Decoding, with s = sigmoid(output):
xy = (2 s_xy - 0.5 + grid) * stride, wh = (2 s_wh)^2 * anchor * stride, score = objectness * class.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from dgh_deploy.models.yolo import YoloDeploy
from dgh_deploy.tasks.detect_layout import DetectLayout

# YOLOv5 v6.x defaults for P3/8, P4/16, P5/32, in pixels (w, h per anchor).
V5_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


class AnchorHead(nn.Module):
    """YOLOv5's ``Detect``: per level a 1x1 conv to na x (5 + nc) channels (x, y, w, h, obj, classes)."""

    def __init__(self, nc: int, anchors: tuple[tuple[int, ...], ...], ch: list[int], strides: list[int]) -> None:
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in ch)
        grid_units = torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2)
        # In stride units, as the checkpoints store it (the checkpoint's values replace these).
        self.register_buffer("anchors", grid_units / torch.tensor(strides, dtype=torch.float32).view(-1, 1, 1))

    def part_channels(self) -> dict[str, list[int]]:
        """The conv's output channels of each part, anchor-major: box (na x 4), obj (na), cls (na x nc)."""
        spans = {"box": range(0, 4), "obj": range(4, 5), "cls": range(5, self.no)}
        return {k: [a * self.no + c for a in range(self.na) for c in r] for k, r in spans.items()}

    def level_parts(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level ``i``'s raw box (N x na*4 x h x w), objectness (N x na x h x w) and class logits."""
        conv = self.m[i]
        if isinstance(conv, PartConvs):
            return conv(x)
        p = conv(x)
        n, _, gh, gw = p.shape
        p = p.view(n, self.na, self.no, gh, gw)  # channels are anchor-major: views, no copies
        return p[:, :, :4].reshape(n, -1, gh, gw), p[:, :, 4], p[:, :, 5:].reshape(n, -1, gh, gw)

    def level_maps(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level ``i``'s raw box, objectness and class logits as N x na x k x h x w views, for DGH.

        :meth:`level_parts` in the shape generation needs: one split of the conv output, so the
        backward is one concatenation where three slices zero-filled the whole map each, and no
        reshape copies (YOLOv5n at 320: 7% of a generation step)."""
        conv = self.m[i]
        if isinstance(conv, PartConvs):
            return tuple(t.view(t.shape[0], self.na, -1, *t.shape[2:]) for t in conv(x))  # type: ignore[return-value]
        p = conv(x)
        n, _, gh, gw = p.shape
        box, obj, cls = p.view(n, self.na, self.no, gh, gw).split((4, 1, self.nc), dim=2)
        return box, obj, cls


class PartConvs(nn.Module):
    """One head conv as three (box, objectness, class channels), for export: the same weights, sliced.

    In a per-tensor int8 graph one conv output shares its scale between box logits (about +-4)
    and class logits (down to about -20): the box logits keep a step of ~0.12, about 12% of an
    anchor's size in w/h. Three outputs get three scales.
    """

    def __init__(self, conv: nn.Conv2d, channels: dict[str, list[int]]) -> None:
        super().__init__()
        self.box, self.obj, self.cls = (self._slice(conv, channels[k]) for k in ("box", "obj", "cls"))

    @staticmethod
    def _slice(conv: nn.Conv2d, channels: list[int]) -> nn.Conv2d:
        part = nn.Conv2d(conv.in_channels, len(channels), 1)
        with torch.no_grad():
            part.weight.copy_(conv.weight[channels])
            part.bias.copy_(conv.bias[channels])
        return part.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.box(x), self.obj(x), self.cls(x)


def split_head(model: YOLOv5Detector) -> YOLOv5Detector:
    """The export form: each head conv as :class:`PartConvs` (in place; float outputs unchanged)."""
    head = model.head
    for i, conv in enumerate(head.m):
        if not isinstance(conv, PartConvs):
            head.m[i] = PartConvs(conv, head.part_channels())
    return model


class YOLOv5Detector(YoloDeploy):
    """The anchor head's deploy form: objectness multiplied into the class scores (see DetectLayout)."""

    def head_raw(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level: box regression, objectness and class logits, each N x na x k x h x w."""
        return [t for i, f in enumerate(feats) for t in self.head.level_maps(i, f)]

    def decode(
        self, maps: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`head_raw`'s maps (box, objectness, class, N x na x k x h x w, per level) -> deploy outputs."""
        # 5-D (head_maps) -> N x na*k x h x w, anchor-major, as level_parts (and a maps file) give them
        flat = [m.flatten(1, 2) if m.dim() == 5 else m for m in maps]
        return self._decode_parts([tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)], size)

    def export_maps(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level box, objectness and class logits, N x na*k x h x w (the export form's part convs)."""
        return [p for i, f in enumerate(feats) for p in self.head.level_parts(i, f)]

    def map_meanings(self, imgsz: tuple[int, int]) -> list[str]:
        h = self.head
        out = []
        for i, s in enumerate(self.strides):
            cells = f"stride {s}, {imgsz[0] // s} x {imgsz[1] // s} cells"
            anchors = ", ".join(f"{w:g}x{hh:g}" for w, hh in (h.anchors[i] * s).tolist())
            out += [f"box logits, {h.na * 4} channels ({cells}), anchor-major: x, y, w, h of each anchor in "
                    f"turn (w x h px: {anchors}); "
                    "with t = sigmoid, cx = (2 t - 0.5 + cell column) x stride, cy likewise with the row, "
                    "w = (2 t)^2 x anchor w, h likewise",
                    f"objectness logits, {h.na} channels ({cells}), one per anchor: sigmoid, multiplied into "
                    "the anchor's class scores",
                    f"class logits, {h.na * self.nc} channels ({cells}): {self.nc} per anchor, anchor-major; "
                    "sigmoid times the objectness gives the scores"]
        return out

    def decode_features(
        self, feats: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The graph's decode: 4-D channel slices of each head conv (see below), never the 5-D maps."""
        # A generator: each level's convs run just before its sigmoids, the op order the converted files
        # have always had (all convs first reorders the graph: same values, other bytes).
        return self._decode_parts((self.head.level_parts(i, f) for i, f in enumerate(feats)), size)

    def _decode_parts(
        self, levels: Iterable[tuple[torch.Tensor, ...]], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h = self.head
        # Each part goes through its sigmoid per level, before anything joins them: TFLite's
        # concatenation forces one scale on all it joins, and a sigmoid output has the fixed scale
        # 1/256 everywhere, so the joins below cost nothing.
        # Per anchor a channel slice then a flatten: 4-D/3-D ops only, which converters map to
        # NHWC cleanly (a 5-D view + permute, as in YOLOv5's own export, is riskier for onnx2tf).
        cols: tuple[list[torch.Tensor], ...] = ([], [], [])
        firsts = []  # each level's first part: the grid's shapes
        for parts in levels:
            firsts.append(parts[0])
            for col, p in zip(cols, parts, strict=True):
                s, width = p.sigmoid(), p.shape[1] // h.na
                col += [s[:, a * width : (a + 1) * width].flatten(2) for a in range(h.na)]
        box, obj, cls = (torch.cat(c, 2) for c in cols)  # N x C x A
        gain, offset, anchor_wh = self._grid(firsts, size)
        xy = box[:, 0:2] * gain + offset  # (2 s - 0.5 + grid) * stride / size
        wh = box[:, 2:4] * box[:, 2:4] * anchor_wh  # (2 s)^2 * anchor * stride / size
        return torch.cat((xy, wh), 1), cls, obj

    def _grid(self, feats: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Per anchor (1 x 2 x A): 2 stride / (W, H), (grid - 0.5) stride / (W, H), 4 anchor stride / (W, H)."""
        ref = feats[0]
        key = (size, tuple(tuple(f.shape[-2:]) for f in feats), ref.device, ref.dtype)
        if key not in self._grids:
            h = self.head
            norm = torch.tensor([1.0 / size[1], 1.0 / size[0]]).view(2, 1)
            gains, offsets, whs = [], [], []
            for i, (f, s) in enumerate(zip(feats, self.strides, strict=True)):
                gh, gw = int(f.shape[-2]), int(f.shape[-1])
                gy, gx = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                        indexing="ij")
                cells = torch.stack((gx.flatten(), gy.flatten()))  # 2 x h*w
                for a in range(h.na):
                    gains.append((2.0 * s * norm).expand(2, gh * gw))
                    offsets.append((cells - 0.5) * s * norm)
                    whs.append((4.0 * h.anchors[i, a].detach().float().cpu().view(2, 1) * s * norm).expand(2, gh * gw))
            self._grids[key] = tuple(torch.cat(t, 1)[None].to(ref.device, ref.dtype) for t in (gains, offsets, whs))
        return self._grids[key]

    def load_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._grids.clear()  # the anchors may change with the weights
        return super().load_state_dict(*args, **kwargs)


def build_yolov5(scale: str = "n", nc: int = 80, layout: DetectLayout | None = None) -> YOLOv5Detector:
    """Ultralytics' ``yolov5{scale}.yaml`` backbone/neck + the anchor head, random weights."""
    from ultralytics.nn.tasks import parse_model, yaml_model_load
    from ultralytics.utils.torch_utils import initialize_weights

    cfg = copy.deepcopy(yaml_model_load(f"yolov5{scale}.yaml"))
    head_from = cfg["head"][-1][0]  # Ultralytics' Detect spec: [[17, 20, 23], 1, Detect, [nc]]
    cfg["head"] = cfg["head"][:-1]
    cfg["nc"] = nc
    body, save = parse_model(cfg, ch=3, verbose=False)
    initialize_weights(body)  # BatchNorm eps 1e-3, as YOLOv5 trained with (PyTorch's 1e-5 costs ~1 mAP point)
    marker = nn.Identity()  # stands in for the head until its input channels are known
    marker.f = head_from  # type: ignore[assignment]
    net = YOLOv5Detector(nn.Sequential(*body, marker), save, [1], layout or DetectLayout(nc))
    with torch.no_grad():  # channels and strides of the head's inputs, measured as Ultralytics does
        feats = net.features(torch.zeros(1, 3, 256, 256))
    net.strides = [256 // f.shape[-1] for f in feats]
    head = AnchorHead(nc, V5_ANCHORS, [f.shape[1] for f in feats], net.strides)
    head.f, head.i = head_from, len(body)
    net.model[-1] = head
    return net


def yolov5n() -> YOLOv5Detector:
    return build_yolov5("n")
