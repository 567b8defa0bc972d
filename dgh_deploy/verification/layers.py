"""Where int8 loses accuracy: each layer's output, quantized against float, on the held-out images.

A target that can see inside its quantized model (every tensor of a file, every node of a graph,
every fake-quantized layer) returns one :class:`LayerError` per tensor, in execution order; the
job keeps the weakest in the report and all of them in ``layer_sqnr.csv``. The signal-to-
quantization-noise ratio of a tensor includes the noise every layer before it let through, so the
layer to fix is where the SQNR *falls*, not only where it is lowest.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from statistics import median

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.reporting.report import LayerDiagnosis, LayerEntry

WORST = 10  # layers kept in the report (all are in the CSV)
NOISIEST = 4  # modules named as the first to keep at higher precision
PIXEL_BUDGET = 8 * 320 * 320  # images x pixels compared: 8 images at 320, 2 at 640, 800 at 32 (capped below)
MAX_IMAGES = 32
LAYER_TABLE = "layer_sqnr.csv"


@dataclass(frozen=True)
class LayerError:
    index: int  # position of the producing op in the quantized model's execution order
    op: str  # the op's type, as the quantized model names it
    tensor: str  # the tensor's name in the quantized model
    layer: str  # the PyTorch module it comes from where the converter's names tell ("model.9.cv2.conv")
    sqnr_db: float  # 10 log10(mean x^2 / mean (q - x)^2) over the images; inf when exact
    float_min: float
    float_max: float
    scale: float = 0.0  # the quantized tensor's scale (0 where per-channel or float)
    zero_point: int = 0
    input_sqnr_db: float | None = None  # its noisiest input's SQNR, where the target knows the graph

    @property
    def fall_db(self) -> float | None:
        """The noise this op adds: how far the SQNR falls from its noisiest input to its output."""
        if self.input_sqnr_db is None or not math.isfinite(self.sqnr_db):
            return None
        return self.input_sqnr_db - self.sqnr_db if math.isfinite(self.input_sqnr_db) else math.inf


def sqnr_db(reference: np.ndarray, quantized: np.ndarray) -> float:
    """10 log10(signal / noise) of ``quantized`` against ``reference``; inf when they are equal."""
    x = reference.astype(np.float64)
    noise = float(((quantized.astype(np.float64) - x) ** 2).mean())
    return math.inf if noise == 0 else 10.0 * math.log10(max(float((x**2).mean()), 1e-30) / noise)


def diagnosis_images(held: int, imgsz: tuple[int, int]) -> int:
    """How many held-out images to compare: a fixed number of pixels, so a 640 detector costs what a 320 one does."""
    return max(1, min(held, MAX_IMAGES, PIXEL_BUDGET // (imgsz[0] * imgsz[1])))


def summarise(rows: list[LayerError], images: int, runtime: str, table: str) -> LayerDiagnosis:
    """The report's view: the weakest layers (finite SQNR, lowest first), the median, and the op that
    adds the most noise (the largest fall from its inputs' SQNR; from the tensor before it in execution
    order where the target does not know the graph)."""
    finite = [r for r in rows if math.isfinite(r.sqnr_db)]
    worst = sorted(finite, key=lambda r: r.sqnr_db)[:WORST]
    fall = max(falls(finite), key=lambda f: f[0], default=None)
    return LayerDiagnosis(
        images=images, runtime=runtime, tensors=len(rows), table=table,
        median_db=round(median(r.sqnr_db for r in finite), 2) if finite else None,
        worst=[_entry(r) for r in worst],
        largest_fall=None if fall is None else _entry(fall[1], round(fall[0], 2)),
        noisiest_modules=repair_candidates(rows, NOISIEST),
    )


def falls(rows: list[LayerError]) -> list[tuple[float, LayerError]]:
    """(dB the SQNR falls at the op, the op) for every finite row."""
    if any(r.input_sqnr_db is not None for r in rows):
        return [(f, r) for r in rows if (f := r.fall_db) is not None and math.isfinite(f)]
    return [(rows[i - 1].sqnr_db - rows[i].sqnr_db, rows[i]) for i in range(1, len(rows))]


def repair_candidates(rows: list[LayerError], k: int) -> list[str]:
    """The ``k`` modules whose ops add the most noise (their falls summed): where higher precision pays."""
    added: dict[str, float] = {}
    for f, r in falls([r for r in rows if math.isfinite(r.sqnr_db)]):
        if r.layer != "(model)" and f > 0:
            added[r.layer] = added.get(r.layer, 0.0) + f
    return sorted(added, key=lambda name: -added[name])[:k]


def _entry(r: LayerError, fall_db: float | None = None) -> LayerEntry:
    return LayerEntry(r.index, r.op, r.layer, round(r.sqnr_db, 2), [round(r.float_min, 4), round(r.float_max, 4)],
                      r.scale, r.zero_point, fall_db)


def write_table(rows: list[LayerError], path: Path) -> Path:
    """Every compared tensor, in execution order, as CSV."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(LayerError)])
        writer.writeheader()
        for r in rows:
            writer.writerow({**asdict(r), "sqnr_db": round(r.sqnr_db, 3) if math.isfinite(r.sqnr_db) else "inf",
                             "input_sqnr_db": "" if r.input_sqnr_db is None else round(r.input_sqnr_db, 3)})
    return path
