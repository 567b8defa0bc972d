"""Per-layer SQNR of the fake-quantized model: each quantized conv/linear output against the float
model's same layer (BN folded alike), on the same images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dgh_deploy.targets.sim.fake_quant import QuantLayer, fold_batchnorm
from dgh_deploy.verification.layers import LayerError, sqnr_db


def sim_layer_errors(float_module: nn.Module, sim: nn.Module, images: np.ndarray) -> list[LayerError]:
    """One row per :class:`QuantLayer` of ``sim``, in execution order."""
    reference, _, _ = fold_batchnorm(float_module)
    layers = [m for m in sim.modules() if isinstance(m, QuantLayer)]
    got = _record(sim, {q.act.name: q for q in layers}, images)
    ref = _record(reference, {q.act.name: reference.get_submodule(q.act.name) for q in layers}, images)
    order = sorted(got, key=lambda name: got[name][0])
    rows = []
    for index, name in enumerate(order):
        x, q = ref[name][1], got[name][1]
        rows.append(LayerError(index, type(reference.get_submodule(name)).__name__, name, name, sqnr_db(x, q),
                               float(x.min()), float(x.max())))
    return rows


@torch.no_grad()
def _record(net: nn.Module, modules: dict[str, nn.Module], images: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """Each module's output on ``images`` (concatenated over the images), with the order it first ran in."""
    seen: dict[str, tuple[int, list[np.ndarray]]] = {}

    def hook(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def record(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            seen.setdefault(name, (len(seen), []))[1].append(out.detach().float().numpy())
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        for image in images:
            net(torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    return {name: (order, np.concatenate(chunks)) for name, (order, chunks) in seen.items()}
