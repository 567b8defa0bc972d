"""A runner of an Ultralytics-layout file that gives its one output back in the model's own layout.

The job scores every file of a detector the same way, from the model's deploy layout (boxes and
scores apart, boxes normalised). An Ultralytics-layout file joins them in one ``[N, 4 + nc, anchors]``
output, with boxes normalised (LiteRT) or in input pixels (ONNX); this view undoes exactly that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dgh_deploy.runtime.base import Runner
from dgh_deploy.tasks.detect_layout import DetectLayout, repack, ultralytics_layout


class SplitView(Runner):
    """``file``'s single output -> ``layout``'s outputs; ``pixels`` (h, w): boxes come in input pixels."""

    def __init__(self, file: Runner, layout: DetectLayout, pixels: tuple[int, int] | None = None) -> None:
        self.file, self.layout, self.pixels = file, layout, pixels
        self.name = file.name

    def io_details(self) -> dict[str, Any]:
        details = getattr(self.file, "io_details", None)
        return details() if callable(details) else {}

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        out = [np.asarray(o, np.float32) for o in self.file.infer(x)]
        if self.pixels is not None and len(out) == 1:
            h, w = self.pixels
            out[0] = out[0].copy()
            out[0][:, 0:4] /= np.array([w, h, w, h], np.float32).reshape(1, 4, 1)
        return repack(out, ultralytics_layout(self.layout.nc), self.layout)
