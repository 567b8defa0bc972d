"""A .tflite model on the LiteRT interpreter (``ai_edge_litert``), behind the common Runner interface.

The runner hides everything a TFLite model does differently from PyTorch: NHWC layout (onnx2tf
transposes images and feature maps), integer I/O (quantize with the input tensor's own scale and
zero point, dequantize each output with its own), and the order of outputs (onnx2tf may reorder
them; the signature keeps the ONNX names ``output0``, ``output_0``... which map them back).
The mapping (:func:`file_layout`, :func:`file_input`, :func:`torch_output`) is shared with the
TFLite Micro runner, which runs the same files.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError
from dgh_deploy.runtime.base import Runner
from dgh_deploy.runtime.native_stderr import quiet_native_stderr

_OUTPUT_INDEX = re.compile(r"output_?(\d+)$")


@dataclass(frozen=True)
class TensorIO:
    """One input or output of the .tflite file, as the runner uses it."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float  # 0.0 for float tensors
    zero_point: int

    @property
    def quantized(self) -> bool:
        return np.issubdtype(self.dtype, np.integer) and self.scale > 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name,
                "scale": self.scale, "zero_point": self.zero_point}


def open_interpreter(path: str | Path | bytes, num_threads: int = 1, preserve_all: bool = False,
                     delegates: bool = True) -> Any:
    """An allocated LiteRT interpreter of a file (or a model's bytes); one the runtime cannot load is a DGHError.

    ``delegates=False`` uses the reference kernels only: slow, but every op stays visible
    (the default XNNPACK delegate folds ops into one DELEGATE node and hides intermediates).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        source = {"model_content": path} if isinstance(path, bytes) else {"model_path": str(path)}
        # LiteRT's C++ notice ("Created TensorFlow Lite XNNPACK delegate for CPU.") off the console
        with quiet_native_stderr(enabled=not logging.getLogger("dgh_deploy").isEnabledFor(logging.DEBUG)):
            it = Interpreter(**source, num_threads=int(num_threads), experimental_op_resolver_type=resolver,
                             experimental_preserve_all_tensors=preserve_all)
            it.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DGHError(
            f"the LiteRT interpreter cannot load '{_name(path)}' ({reason})",
            "the converter emitted ops this runtime lacks (e.g. TensorFlow Flex ops): replace them in the model",
        ) from exc
    return it


def _name(path: str | Path | bytes) -> str:
    return "the model in memory" if isinstance(path, bytes) else Path(path).name


class LiteRTRunner(Runner):
    """Runs a .tflite file: NCHW float32 in, float32 outputs (NCHW where the model's are) out.

    ``output_shapes`` (the PyTorch outputs' shapes without the batch dimension) lets the runner
    undo onnx2tf's channel-last transposition of outputs; without it outputs come back as the
    file has them. Images run one at a time: onnx2tf bakes batch 1 into reshapes, so resizing
    the input is not safe in general, and XNNPACK runs a batch-1 ResNet-20 in under a millisecond.
    ``device_runner`` is the same file on the device's own runtime (TFLite Micro), when the
    target verifies on it too: the job scores both.
    """

    name = "litert"
    device_runner: Runner | None = None

    def __init__(self, path: str | Path, num_threads: int = 2,
                 output_shapes: list[tuple[int, ...]] | None = None) -> None:
        self.path = Path(path)
        self.num_threads = num_threads
        self._it = open_interpreter(self.path, num_threads)
        layout = file_layout(self._it, self.path, output_shapes)
        self.input, self.outputs, self._perms = layout.input, layout.outputs, layout.perms
        self.name = f"litert-{np.dtype(self.input.dtype).name}"

    def io_details(self) -> dict[str, Any]:
        return {"input": self.input.describe(), "outputs": [o.describe() for o in self.outputs]}

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        x = file_input(x, self.input, self.path)
        results: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for i in range(len(x)):
            self._it.set_tensor(self.input.index, x[i : i + 1])
            self._it.invoke()
            for k, o in enumerate(self.outputs):
                results[k].append(self._it.get_tensor(o.index).copy())
        return [torch_output(np.concatenate(chunks), o, perm)
                for o, perm, chunks in zip(self.outputs, self._perms, results, strict=True)]


# --- what every runner of a .tflite file shares (LiteRT, TFLite Micro) ---------------------------------


@dataclass(frozen=True)
class FileLayout:
    """How a .tflite file's tensors map onto the PyTorch model's: its input, its outputs in PyTorch's
    order, where each sits among the file's outputs, and the transposition back to PyTorch's layout."""

    input: TensorIO
    outputs: list[TensorIO]  # in PyTorch's order
    positions: list[int]  # each output's place in the file's output list (how TFLite Micro numbers them)
    perms: list[tuple[int, ...] | None]


def file_layout(it: Any, path: Path, output_shapes: list[tuple[int, ...]] | None = None) -> FileLayout:
    """The layout of the file ``it`` (a LiteRT interpreter) has loaded; see :class:`FileLayout`."""
    inputs = it.get_input_details()
    if len(inputs) != 1:
        raise DGHError(
            f"'{path.name}' has {len(inputs)} inputs; the runner feeds one image tensor",
            "export the model with a single image input",
        )
    details = it.get_output_details()
    outputs = _ordered_outputs(it, details)
    file_order = [d["index"] for d in details]
    perms = [_output_perm(path, o.shape, output_shapes[k] if output_shapes and k < len(output_shapes) else None)
             for k, o in enumerate(outputs)]
    return FileLayout(tensor_io(inputs[0]), outputs, [file_order.index(o.index) for o in outputs], perms)


def _ordered_outputs(it: Any, details: list[dict[str, Any]]) -> list[TensorIO]:
    """The outputs in PyTorch's order: by the ONNX output index kept in the signature names."""
    try:
        sig = it.get_signature_runner().get_output_details()
    except (ValueError, RuntimeError):  # a file without signatures: keep the file's order
        sig = {}
    by_index = {d["index"]: d for d in details}
    numbered: dict[int, dict[str, Any]] = {}
    for key, d in sig.items():
        m = _OUTPUT_INDEX.search(key)
        if m is not None and d["index"] in by_index:
            numbered[int(m.group(1))] = by_index[d["index"]]
    if len(numbered) == len(details) and sorted(numbered) == list(range(len(details))):
        return [tensor_io(numbered[i], f"output{i}") for i in range(len(details))]
    return [tensor_io(d) for d in details]


def _output_perm(path: Path, shape: tuple[int, ...], expected: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The transposition that turns the file's output layout into PyTorch's, if any is needed."""
    if expected is None or len(shape) < 3:
        return None
    want = tuple(expected)
    channel_first = (0, len(shape) - 1, *range(1, len(shape) - 1))
    # onnx2tf emits feature maps channel-last: prefer that reading when both fit (square maps).
    if tuple(shape[i] for i in channel_first)[1:] == want:
        return channel_first
    if tuple(shape[1:]) == want:
        return None
    raise DGHError(
        f"'{path.name}' has an output of shape {list(shape)} that matches no PyTorch output "
        f"(expected N x {' x '.join(map(str, want))})",
        "the conversion changed the output layout: re-export the model with plain NCHW outputs",
    )


def file_input(x: np.ndarray, io: TensorIO, path: Path) -> np.ndarray:
    """NCHW float32 images -> the file's input layout and dtype (quantized with the input's own scale)."""
    x = np.asarray(x, dtype=np.float32)
    shape = io.shape
    if x.ndim != 4 or len(x) == 0:
        raise DGHError(f"runner input has shape {x.shape}, not N x C x H x W with N > 0",
                       "pass a non-empty batch of images")
    if tuple(shape[1:]) == (x.shape[2], x.shape[3], x.shape[1]):
        x = x.transpose(0, 2, 3, 1)
    elif tuple(shape[1:]) != tuple(x.shape[1:]):
        raise DGHError(
            f"images of shape {list(x.shape[1:])} do not fit the model input {list(shape)} of '{path.name}'",
            "resize the images to the model's --imgsz",
        )
    if io.quantized:
        info = np.iinfo(io.dtype)
        q = np.rint(x / io.scale) + io.zero_point
        return np.clip(q, info.min, info.max).astype(io.dtype)
    return np.ascontiguousarray(x, dtype=io.dtype)


def torch_output(y: np.ndarray, io: TensorIO, perm: tuple[int, ...] | None) -> np.ndarray:
    """One output batch as the file has it -> float32 in PyTorch's layout (dequantized with its own scale)."""
    y = (y.astype(np.float32) - io.zero_point) * io.scale if io.quantized else y.astype(np.float32)
    return np.ascontiguousarray(y.transpose(perm)) if perm is not None else y


def tensor_io(d: dict[str, Any], name: str | None = None) -> TensorIO:
    q = d.get("quantization_parameters", {})
    scales, zps = q.get("scales", np.zeros(0)), q.get("zero_points", np.zeros(0))
    return TensorIO(
        name=name or d["name"], index=int(d["index"]), shape=tuple(int(s) for s in d["shape"]),
        dtype=np.dtype(d["dtype"]), scale=float(scales[0]) if len(scales) else 0.0,
        zero_point=int(zps[0]) if len(zps) else 0,
    )
