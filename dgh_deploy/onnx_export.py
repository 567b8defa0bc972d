"""PyTorch -> ONNX, the common first step of every converting target."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel

INPUT_NAME = "images"
DEFAULT_OPSET = 17


def export_onnx(
    model: LoadedModel,
    path: str | Path,
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    module: torch.nn.Module | None = None,
) -> Path:
    """Export ``model`` (with its export rewrites, or ``module`` if given) to ONNX at ``path``.

    Uses the TorchScript exporter: it gives plain, static graphs that onnx2tf and TensorRT's
    parser both take. Output names are ``output0``, ``output1``, ... in forward order.
    """
    import onnx

    net = (module if module is not None else model.for_export()).eval()
    dummy = model.dummy_input(batch)
    with torch.no_grad():
        n_out = len(_flatten(net(dummy)))
    out_names = [f"output{i}" for i in range(n_out)]
    axes = {n: {0: "batch"} for n in [INPUT_NAME, *out_names]} if dynamic_batch else None
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                net, (dummy,), buf, opset_version=opset, input_names=[INPUT_NAME], output_names=out_names,
                dynamic_axes=axes, do_constant_folding=True, dynamo=False,
            )
    except Exception as exc:
        reason = exc_reason(exc)
        raise DGHError(
            f"ONNX export of '{model.name}' failed: {reason}",
            "replace the op the exporter names with a standard one, or wrap it in a custom module",
        ) from exc
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def _flatten(out: object) -> list[torch.Tensor]:
    from dgh_deploy.runtime.base import flatten_outputs

    return flatten_outputs(out)
