"""The deployed file's input contract: what device code does to feed it and to read its outputs.

A full-integer file takes integers: the camera's pixels go through the model's own preprocessing
(channel order, resize or letterbox, scale, mean and std) and then the input tensor's scale and
zero point. Getting any of them wrong costs accuracy silently, so every report states them, with
the numbers filled in, beside what each output holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.reporting.report import ContractEntry, TensorSpec


def io_contract(model: LoadedModel, file_name: str, io: dict[str, Any], meanings: list[str]) -> ContractEntry:
    """The contract of ``file_name`` whose runtime I/O is ``io`` (``{"input": ..., "outputs": [...]}``, as
    the runners describe it; empty when the target's runner has no file I/O of its own, e.g. ``sim``)."""
    pre = model.preprocessing
    inp = _input_spec(model, io)
    layout = input_layout(inp.shape, model.imgsz)
    inp.meaning = f"{layout}, {pre.channel_order}, {_value_range(inp)}"
    outputs = [spec_of(o) for o in io.get("outputs", [])] or model_outputs(model)
    for spec, meaning in zip(outputs, meanings, strict=False):
        spec.meaning = meaning + _dequantize_note(spec)
    return ContractEntry(
        file=file_name, channel_order=pre.channel_order, layout=layout, resize=pre.resize,
        pad_value=pre.pad_value if pre.resize == "letterbox" else None,
        mean=[float(m) for m in pre.mean], std=[float(s) for s in pre.std], input=inp, outputs=outputs,
        steps=feeding_steps(model, inp, layout),
    )


def spec_of(d: dict[str, Any]) -> TensorSpec:
    """A runner's tensor description (scale 0 for a float tensor) as a TensorSpec."""
    quantized = bool(d.get("scale")) and d["dtype"] != "float32"
    return TensorSpec(d["name"], list(d["shape"]), d["dtype"], float(d["scale"]) if quantized else None,
                      int(d["zero_point"]) if quantized else None)


def model_outputs(model: LoadedModel) -> list[TensorSpec]:
    """The PyTorch model's own outputs (float32), for a target whose runner has no file I/O."""
    from dgh_deploy.runtime.base import TorchRunner

    shapes = [list(o.shape) for o in TorchRunner(model.module).infer(model.dummy_input().numpy())]
    return [TensorSpec(f"output{i}", shape, "float32") for i, shape in enumerate(shapes)]


def _input_spec(model: LoadedModel, io: dict[str, Any]) -> TensorSpec:
    if io.get("input"):
        return spec_of(io["input"])
    return TensorSpec("input", [1, 3, *model.imgsz], "float32")  # the PyTorch model's own input


def input_layout(shape: list[int], imgsz: tuple[int, int]) -> str:
    """NHWC when the channels come last, else NCHW (PyTorch's)."""
    return "NHWC" if len(shape) == 4 and list(shape[1:3]) == list(imgsz) and shape[3] == 3 else "NCHW"


def feeding_steps(model: LoadedModel, inp: TensorSpec, layout: str) -> list[str]:
    """From a decoded image to the input tensor, in order, with this job's numbers."""
    pre = model.preprocessing
    h, w = model.imgsz
    order = "BGR pixels (OpenCV's imread order)" if pre.channel_order == "BGR" else "RGB pixels"
    steps = [f"decode to 8-bit {order} (0..255), turned upright by the EXIF orientation",
             _resize_step(pre.resize, pre.pad_value, h, w)]
    plain = all(m == 0 for m in pre.mean) and all(s == 1 for s in pre.std)
    steps.append("x = pixel / 255" if plain else
                 f"x = (pixel / 255 - mean) / std per channel, mean {_fmt(pre.mean)}, std {_fmt(pre.std)}")
    if inp.scale and inp.dtype in ("int8", "uint8", "int16"):
        info = np.iinfo(inp.dtype)
        steps.append(f"q = clamp(round(x / {inp.scale:.9g}) {_plus(inp.zero_point)}, {info.min}, {info.max}) "
                     f"as {inp.dtype}" + _pixel_shortcut(inp, plain))
    else:
        steps.append("feed x as float32 (the file quantizes its input itself)")
    steps.append(f"lay the {h}x{w} image out {layout}, shape {list(inp.shape)}")
    return steps


def _resize_step(resize: str, pad_value: int, h: int, w: int) -> str:
    if resize == "letterbox":  # Ultralytics' validation letterbox, as preprocessing.letterbox does it
        return (f"letterbox to {h}x{w} as Ultralytics does: resize the long side to {max(h, w)} (bilinear, "
                f"OpenCV's; the short side scaled alike and rounded up), shrink again to fit {h}x{w} if it "
                f"still exceeds it, and centre on a canvas filled with {pad_value} (map boxes back through the "
                "same scale and offset)")
    if resize == "stretch":
        return (f"resize to {h}x{w} bilinearly (OpenCV's INTER_LINEAR), not keeping the aspect ratio (map boxes "
                "back by each axis' own scale)")
    return f"resize the shorter side to {min(h, w)} bilinearly, then centre-crop {h}x{w}"


def _pixel_shortcut(inp: TensorSpec, plain: bool) -> str:
    """When the input scale is exactly 1/255 on plain /255 preprocessing, the pixel maps to q by an offset."""
    if plain and inp.scale and abs(inp.scale * 255.0 - 1.0) < 1e-6:
        return f" (here exactly q = pixel {_plus(inp.zero_point)})"
    return ""


def _value_range(inp: TensorSpec) -> str:
    if inp.scale and inp.dtype in ("int8", "uint8", "int16"):
        return f"{inp.dtype}, real = (q {_plus(-(inp.zero_point or 0))}) * {inp.scale:.9g}"
    return inp.dtype


def _dequantize_note(spec: TensorSpec) -> str:
    if spec.scale and spec.dtype in ("int8", "uint8", "int16"):
        return f"; dequantize: real = (q {_plus(-(spec.zero_point or 0))}) * {spec.scale:.9g}"
    return ""


def _plus(value: int) -> str:
    """``+ 7`` or ``- 7``: an offset as a formula writes it."""
    return f"- {-value}" if value < 0 else f"+ {value}"


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
