"""Float parity: does the converted float model compute what the PyTorch model computes?

Quantization error and conversion error look alike in an accuracy number; this check separates
them. Before anyone trusts an int8 file we run the converter's *float* output on real inputs
and compare it with PyTorch: a float conversion must agree to float rounding. When it does not,
the target may name the first layer where it stops agreeing (``diagnose``, the target's own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError
from dgh_deploy.runtime.base import Runner

DEFAULT_RTOL = 1e-3  # of each output's scale (its largest magnitude): float32 conversions sit near 1e-6


@dataclass
class ParityResult:
    images: int
    max_abs_error: list[float]  # per output
    output_scale: list[float]  # per output: max |reference|
    tolerance: list[float]  # per output
    top1_agreement: float | None  # percent, classifiers only
    top1_disagreements: int  # images whose reference top-1 is clear (margin > 2 x tolerance) and differs
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        worst = int(np.argmax([e / t for e, t in zip(self.max_abs_error, self.tolerance, strict=True)]))
        text = (f"max error {self.max_abs_error[worst]:.4g} on output {worst} "
                f"(scale {self.output_scale[worst]:.4g}, tolerance {self.tolerance[worst]:.3g})")
        if self.top1_agreement is not None:
            text += f", top-1 agreement {self.top1_agreement:.1f}%"
        return text + f" on {self.images} images"


def compare_outputs(reference: list[np.ndarray], candidate: list[np.ndarray], rtol: float = DEFAULT_RTOL,
                    atol: float = 0.0, classify: bool = False) -> ParityResult:
    """Compare two runners' outputs; ``atol > 0`` replaces the scale-relative tolerance."""
    if len(reference) != len(candidate):
        raise DGHError(
            f"the converted model has {len(candidate)} outputs, PyTorch has {len(reference)}",
            "return plain tensors from forward() so that every output survives export",
        )
    errs, scales, tols = [], [], []
    for k, (r, c) in enumerate(zip(reference, candidate, strict=True)):
        if r.shape != c.shape:
            raise DGHError(
                f"output {k} of the converted model has shape {list(c.shape)}, PyTorch's {list(r.shape)}",
                "re-export the model with static shapes",
            )
        scale = float(np.abs(r).max()) or 1.0
        errs.append(float(np.abs(r.astype(np.float64) - c).max()))
        scales.append(scale)
        tols.append(atol if atol > 0 else rtol * scale)
    agreement, clear_disagree = None, 0
    if classify and reference[0].ndim == 2 and reference[0].shape[1] > 1:
        r, c = reference[0], candidate[0]
        agreement = 100.0 * float((r.argmax(1) == c.argmax(1)).mean())
        top2 = np.sort(r, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * tols[0]
        clear_disagree = int((clear & (r.argmax(1) != c.argmax(1))).sum())
    passed = all(e <= t for e, t in zip(errs, tols, strict=True)) and clear_disagree == 0
    return ParityResult(len(reference[0]), errs, scales, tols, agreement, clear_disagree, passed)


def check_float_parity(
    candidate: Runner,
    reference: Runner,
    images: np.ndarray,
    *,
    classify: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = 0.0,
    diagnose: Callable[[np.ndarray], str | None] | None = None,
    what: str = "float conversion",
) -> ParityResult:
    """Raise :class:`DGHError` unless they agree; ``diagnose(one_image)`` may name the first diverging layer."""
    result = compare_outputs(reference.infer_all(images), candidate.infer_all(images), rtol, atol, classify)
    if result.passed:
        return result
    where = ""
    if diagnose is not None:
        try:
            layer = diagnose(images[:1])
        except Exception:  # the diagnosis is best effort; the verdict stands without it
            layer = None
        if layer:
            where = f"; first diverging layer: {layer}"
    raise DGHError(
        f"{what} disagrees with PyTorch: {result.describe()}{where}",
        "rewrite that layer into an equivalent converter-friendly form (a model export_form), "
        "or report the op to the converter",
    )
