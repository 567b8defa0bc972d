"""PyTorch -> ONNX, the common first step of every converting target."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel

log = logging.getLogger("dgh_deploy")
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
    parser both take. Output names are ``output0``, ``output1``, ... in forward order. A
    ``dynamic_batch`` graph that cannot run a batch of two is written with the static ``batch``
    instead (its runner then feeds it ``batch`` images at a time).
    """
    net = (module if module is not None else model.for_export()).eval()
    proto = _exported(model, net, batch, dynamic_batch, opset)
    if dynamic_batch and not _takes_any_batch(proto, model):
        # A model that reads its batch size as a Python number (ShuffleNetV2's channel shuffle:
        # ``x.data.size()`` in a reshape) traces it as a constant: the "dynamic" graph fails on any other.
        log.info("'%s' fixes its batch size inside the graph: exported with a static batch of %d", model.name, batch)
        proto = _exported(model, net, batch, False, opset)
    path = Path(path)
    with atomic_path(path) as tmp:
        import onnx

        onnx.save(proto, str(tmp))
    return path


def _exported(model: LoadedModel, net: torch.nn.Module, batch: int, dynamic_batch: bool, opset: int) -> Any:
    """The checked ONNX proto of ``net``."""
    import onnx

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
    return proto


def _takes_any_batch(proto: Any, model: LoadedModel) -> bool:
    """Whether the graph runs on a batch of two in ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        session.run(None, {INPUT_NAME: model.dummy_input(2).numpy()})
    except Exception:  # ORT's RuntimeException: the reshape of a traced batch size
        return False
    return True


def _flatten(out: object) -> list[torch.Tensor]:
    from dgh_deploy.runtime.base import flatten_outputs

    return flatten_outputs(out)
