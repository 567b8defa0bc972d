"""Do the visible artifacts of DGH detector images set the activation ranges min/max calibration takes?

YOLOv5n's DGH images at 320 have a saturated frame along the border and fine horizontal stripes
(a period of 4 pixels: the stride of the first two convolutions). Min/max ranges take each
tensor's extreme value over the set in full, so an artifact that makes the extremes would make
the int8 file. For each set this measures, on the float PyTorch model (every leaf module's
output, per tensor over the whole set):

* where each tensor's maximum and minimum sit: the share in the border band, beside the band's
  share of the area (an artifact that drives the extremes puts them there far more often);
* each tensor's range when the border band is replaced by a reflection of the interior, and when
  the vertical frequencies of period 5 pixels or less (the stripes) are removed, each against the
  range of the set as generated, beside the same low-pass along the columns (a control: any
  smoothing narrows ranges a little);
* each tensor's range on the set against its range on real images (a window of the real
  calibration folder, as ``bench/detect_picks.py`` makes it).

    .venv/bin/python -m bench.artifacts --sets out/picks/sets --seeds 0,1,2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import common
from bench.common import set_path

if TYPE_CHECKING:
    import torch
    from torch import nn

Ranges = dict[str, tuple[float, float, bool, bool]]  # tensor -> (min, max, min in band, max in band)


def tensor_ranges(module: nn.Module, images: torch.Tensor, band: float, batch: int = 8) -> Ranges:
    """Each leaf module's 4-D output: its min and max over ``images`` and whether each lies in the border band."""
    import torch
    found: dict[str, list[Any]] = {}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if not torch.is_tensor(out) or out.ndim != 4:
                return
            _, _, h, w = out.shape
            rows = torch.arange(h)[:, None].expand(h, w)
            cols = torch.arange(w)[None, :].expand(h, w)
            edge = torch.minimum(torch.minimum(rows, h - 1 - rows), torch.minimum(cols, w - 1 - cols))
            in_band = (edge < max(1, round(band * min(h, w)))).flatten()
            per_pixel = out.detach().amax(dim=1).flatten(1), out.detach().amin(dim=1).flatten(1)  # N x HW
            hi, at_hi = per_pixel[0].max(dim=1)
            lo, at_lo = per_pixel[1].min(dim=1)
            j, k = int(hi.argmax()), int(lo.argmin())
            cur = [float(lo[k]), float(hi[j]), bool(in_band[at_lo[k]]), bool(in_band[at_hi[j]])]
            old = found.get(name)
            if old is None:
                found[name] = cur
            else:
                if cur[0] < old[0]:
                    old[0], old[2] = cur[0], cur[2]
                if cur[1] > old[1]:
                    old[1], old[3] = cur[1], cur[3]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                module(images[i : i + batch])
    finally:
        for h in handles:
            h.remove()
    return {k: tuple(v) for k, v in found.items()}  # type: ignore[misc]


def border_reflected(images: torch.Tensor, band: float) -> torch.Tensor:
    import torch
    b = round(band * min(images.shape[-2:]))
    return torch.nn.functional.pad(images[:, :, b:-b, b:-b], (b, b, b, b), mode="reflect")


def low_passed(images: torch.Tensor, dim: int, keep: int) -> torch.Tensor:
    """``images`` without the frequencies from ``keep`` up along ``dim`` (clipped back to the pixel range)."""
    import torch
    spectrum = torch.fft.rfft(images, dim=dim)
    spectrum.narrow(dim, keep, spectrum.shape[dim] - keep).zero_()
    return torch.fft.irfft(spectrum, n=images.shape[dim], dim=dim).clamp(float(images.min()), float(images.max()))


def range_ratios(new: Ranges, base: Ranges) -> dict[str, float]:
    r = np.array([(new[k][1] - new[k][0]) / max(base[k][1] - base[k][0], 1e-12) for k in base])
    return {"median": round(float(np.median(r)), 3), "p10": round(float(np.percentile(r, 10)), 3),
            "p90": round(float(np.percentile(r, 90)), 3)}


def study(module: nn.Module, images: torch.Tensor, real: torch.Tensor, band: float) -> dict[str, Any]:
    base = tensor_ranges(module, images, band)
    h = images.shape[-2]
    keep = h // 5 + 1  # frequency index of a 5-pixel period
    return {
        "tensors": len(base),
        "band_area_share": round(1 - (1 - 2 * band) ** 2, 3),
        "max_in_band": round(float(np.mean([v[3] for v in base.values()])), 3),
        "min_in_band": round(float(np.mean([v[2] for v in base.values()])), 3),
        "border_reflected": range_ratios(tensor_ranges(module, border_reflected(images, band), band), base),
        "stripes_removed": range_ratios(tensor_ranges(module, low_passed(images, 2, keep), band), base),
        "columns_low_passed": range_ratios(tensor_ranges(module, low_passed(images, 3, keep), band), base),
        "against_real": range_ratios(base, tensor_ranges(module, real, band)),
    }


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("artifacts", __doc__)
    p.add_argument("--model", default="yolov5n", help="a detector of bench.common's cases")
    p.add_argument("--sets", default=str(common.WORK / "picks" / "sets"), help="detect_picks' sets (dgh and real)")
    p.add_seeds()
    p.add_argument("--band", type=float, default=0.08, help="border band width, as a share of the side")
    p.add_threads(2)
    p.add_json(str(common.RESULTS / "artifacts_yolov5n_cpu.json"))
    args = p.parse(argv)
    all_cases = common.cases(args.assets)
    if rc := common.check_cases(p, all_cases, [args.model], real=False):
        return rc
    case = all_cases[args.model]
    import torch

    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.loading import load_model

    common.set_threads(args.threads)
    module = load_model(case.model, case.weights, None, case.imgsz).module.eval()
    folder = Path(args.sets)
    out: dict[str, Any] = {"machine": common.machine(), "model": case.model, "imgsz": case.imgsz, "band": args.band,
                           "seeds": {}}
    for seed in common.parse_seeds(args.seeds):
        paths = set_path(folder, "dgh", seed), set_path(folder, "real", seed)
        if not all(q.is_file() for q in paths):
            p.error(f"no {paths[0].name} / {paths[1].name} in {folder}: make them with bench/detect_picks.py")
        dgh, real = (torch.from_numpy(CalibrationSet.load(q).images).float() for q in paths)
        out["seeds"][str(seed)] = result = study(module, dgh, real, args.band)
        print(f"seed {seed}: {result}", flush=True)
    if args.json:
        common.write_result(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
