"""report.md beside report.json: the numbers as a table, and pictures of what was generated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.reporting.report import ContractEntry, LayerDiagnosis, Metrics, Report


def write_human_report(out_dir: Path, report: Report, model: LoadedModel, calib: CalibrationSet,
                       real_inputs: np.ndarray | None = None, target_lines: Sequence[str] = ()) -> Path:
    """Write report.md and its PNGs into ``out_dir``; returns the Markdown path. ``target_lines`` is
    the target's own section (:meth:`~dgh_deploy.targets.Target.markdown_lines`)."""
    import matplotlib

    matplotlib.use("Agg")
    pictures = {"calibration_grid.png": _image_grid(out_dir / "calibration_grid.png", model, calib)}
    curve = calib.stats.get("loss_curve")
    if curve:
        pictures["loss_curve.png"] = _loss_curve(out_dir / "loss_curve.png", curve)
    pictures["activation_ranges.png"] = _activation_ranges(
        out_dir / "activation_ranges.png", model, calib.images, real_inputs, calib.source
    )
    md = _markdown(report, [name for name, ok in pictures.items() if ok], list(target_lines))
    path = out_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text(md)
    return path


def _markdown(report: Report, pictures: list[str], target_lines: list[str]) -> str:
    m, cal, tgt = report.metrics, report.calibration, report.target
    metric = m.metric
    lines = [
        f"# {report.model.name} on {tgt.name}",
        "",
        f"Calibration: **{cal.source}**, {cal.images} images ({cal.held_out} more held out for the "
        f"data-free check). Target constraints: {_describe(tgt.constraints)}. Verified on {tgt.runtime}.",
        "",
    ]
    if m.float_scores is not None and m.quantized is not None:
        lines += [
            f"| model | {metric} | images |",
            "| --- | --- | --- |",
            f"| float (PyTorch) | {m.float_scores[metric]:.2f} | {int(m.float_scores.get('images', 0))} |",
            f"| quantized ({tgt.name}) | {m.quantized[metric]:.2f} | {int(m.quantized.get('images', 0))} |",
            f"| drop | {m.drop:.2f} | |",
            "",
        ]
    if m.data_free is not None:
        lines += ["Data-free check (float against quantized on held-out calibration images): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in m.data_free.items()), ""]
    lines += _validator_lines(m) + _device_lines(m) + target_lines
    lines += _layer_lines(report.layers) + _contract_lines(report.contract)
    if report.gate is not None:
        lines += [f"Quality gate: {report.gate.verdict}", ""]
    lines += ["| stage | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report.times_s.items()]
    lines.append("")
    captions = {
        "calibration_grid.png": "Calibration images (de-normalised to pixels)",
        "loss_curve.png": "Generation losses per iteration",
        "activation_ranges.png": "Per-layer input ranges of every conv/linear: calibration set against real data",
    }
    for name in pictures:
        lines += [f"## {captions[name]}", "", f"![{captions[name]}]({name})", ""]
    return "\n".join(lines)


def _layer_lines(d: LayerDiagnosis | None) -> list[str]:
    """The weakest layers, quantized against float: where to look when the metric drops."""
    if d is None:
        return []
    if d.skipped:
        return ["## Per-layer diagnosis", "", f"Not available: {d.skipped}.", ""]
    lines = ["## Where quantization noise is largest (per-layer SQNR)", "",
             f"{d.tensors} tensors compared on {d.images} held-out calibration images ({d.runtime}); median "
             f"{d.median_db} dB; every tensor in `{d.table}`. The SQNR of a tensor includes the noise of every "
             "layer before it: the layer to fix is where it falls."]
    if d.largest_fall is not None:
        f = d.largest_fall
        lines.append(f"Largest fall: {f.fall_db} dB at `{f.layer}` ({f.op}), to {f.sqnr_db} dB.")
    if d.noisiest_modules:
        lines.append(f"Modules adding the most noise: {', '.join(f'`{m}`' for m in d.noisiest_modules)}.")
    if d.advice:
        lines += ["", f"**To recover**: {d.advice}."]
    lines += ["", "| # | layer | op | SQNR dB | float range | scale |", "|" + " --- |" * 6]
    for e in d.worst:
        lines.append(f"| {e.index} | `{e.layer}` | {e.op} | {e.sqnr_db} | {e.float_range[0]:.3g} .. "
                     f"{e.float_range[1]:.3g} | {e.scale:.3g} |")
    return [*lines, ""]


def _contract_lines(c: ContractEntry | None) -> list[str]:
    """How device code feeds the file and reads it: the recipe, then one row per tensor."""
    if c is None:
        return []
    lines = [f"## Feeding {c.file} on the device", ""]
    lines += [f"{i}. {step}" for i, step in enumerate(c.steps, 1)]
    lines += ["", "| tensor | name | shape | dtype | scale | zero point | holds |", "|" + " --- |" * 7]
    for role, t in [("input", c.input), *((f"output {i}", o) for i, o in enumerate(c.outputs))]:
        scale = "" if t.scale is None else f"{t.scale:.6g}"
        zero = "" if t.zero_point is None else str(t.zero_point)
        shape = "x".join(map(str, t.shape))
        lines.append(f"| {role} | {t.name} | {shape} | {t.dtype} | {scale} | {zero} | {t.meaning} |")
    return [*lines, ""]


def _validator_lines(m: Metrics) -> list[str]:
    """The deployed file under its framework's own validator, beside our score of it."""
    u = m.validator
    if u is None:
        return []
    metric, n = m.metric, int(u.theirs.get("images", 0))
    return [f"## The Ultralytics-layout file under `yolo val`: {u.file}", "",
            f"| scored by | {metric} | mAP50 | images |", "| --- | --- | --- | --- |",
            f"| Ultralytics' validator | {u.theirs[metric]:.2f} | {u.theirs['mAP50']:.2f} | {n} |",
            f"| dgh-deploy | {u.ours[metric]:.2f} | {u.ours['mAP50']:.2f} | {int(u.ours.get('images', 0))} |",
            "", f"Both on the same file and images, NMS {u.nms}; difference {u.difference:+.2f}.", ""]


def _device_lines(m: Metrics) -> list[str]:
    """The same file on the device's own runtime, beside the desktop runtime."""
    dev = m.device
    if dev is None:
        return []
    metric, name, desk = m.metric, dev.runtime, dev.desktop_runtime
    lines = [f"## On the device's runtime: {name}", ""]
    if dev.quantized is not None and dev.float_scores is not None and dev.desktop is not None:
        n = int(dev.quantized.get("images", 0))
        lines += [f"| runtime | {metric} on the same {n} real images |", "| --- | --- |",
                  f"| float (PyTorch) | {dev.float_scores[metric]:.2f} |", f"| {desk} | {dev.desktop[metric]:.2f} |",
                  f"| {name} | {dev.quantized[metric]:.2f} |", ""]
    held = "held-out calibration images"
    for scores, against, what in ((dev.data_free, "float (PyTorch)", held), (dev.data_free_agreement, desk, held),
                                  (dev.agreement, desk, "real images")):
        if scores:
            lines += [f"{name} against {against} on {int(scores.get('images', 0))} {what}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "images"), ""]
    return lines


def _describe(c: dict[str, Any]) -> str:
    return (f"W{c['weight_bits']} {c['weight_granularity']}, A{c['act_bits']} per-tensor, I/O {c['io_dtype']}"
            + (", power-of-two scales" if c.get("power_of_two") else ""))


def _image_grid(path: Path, model: LoadedModel, calib: CalibrationSet, n: int = 32) -> bool:
    import matplotlib.pyplot as plt

    pixels = model.preprocessing.to_pixels(calib.images[:n])
    cols = min(8, len(pixels))
    rows = (len(pixels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, pixels, strict=False):
        ax.imshow(img, interpolation="nearest")
    fig.suptitle(f"{calib.source}: first {len(pixels)} of {len(calib)}", fontsize=9)
    _save(fig, path)
    return True


def _loss_curve(path: Path, curve: Any) -> bool:
    import matplotlib.pyplot as plt

    series = _series(curve)
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if all(v > 0 for vals in series.values() for v in vals):
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def _series(curve: Any) -> dict[str, list[float]]:
    """Accept a list of numbers, a list of dicts, or a dict of lists."""
    if isinstance(curve, dict):
        return {k: [float(x) for x in v] for k, v in curve.items() if isinstance(v, list) and v}
    if isinstance(curve, list) and curve and isinstance(curve[0], dict):
        keys = [k for k, v in curve[0].items() if isinstance(v, (int, float))]
        return {k: [float(row[k]) for row in curve] for k in keys}
    if isinstance(curve, list):
        return {"loss": [float(x) for x in curve]}
    return {}


@torch.no_grad()
def layer_input_ranges(module: nn.Module, images: np.ndarray, batch: int = 64) -> dict[str, tuple[float, float]]:
    """Min and max of the input of every conv and linear layer over ``images``."""
    ranges: dict[str, tuple[float, float]] = {}
    hooks = []

    def hook(name: str):
        def fn(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            lo, hi = float(x.min()), float(x.max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
        return fn

    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        for i in range(0, len(images), batch):
            module(torch.from_numpy(images[i : i + batch]))
    finally:
        for h in hooks:
            h.remove()
    return ranges


def _activation_ranges(path: Path, model: LoadedModel, calib: np.ndarray, real: np.ndarray | None,
                       source: str) -> bool:
    import matplotlib.pyplot as plt

    cal = layer_input_ranges(model.module, calib[:256])
    names = list(cal)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.18), 3.8))
    ax.vlines(x - 0.15, [cal[n][0] for n in names], [cal[n][1] for n in names], color="tab:blue", lw=2,
              label=f"calibration ({source})")
    if real is not None and len(real):
        ref = layer_input_ranges(model.module, real[:256])
        ax.vlines(x + 0.15, [ref[n][0] for n in names], [ref[n][1] for n in names], color="tab:orange", lw=2,
                  label="real data")
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.set_ylabel("input range (min..max)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return True


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
