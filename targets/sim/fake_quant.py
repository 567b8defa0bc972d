"""Fake-quant building blocks of the ``sim`` target: BN folding and quantized layers."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dgh_deploy.calibration.observers import Histogram, QuantGrid, estimate_range, mse_range, with_headroom
from dgh_deploy.calibration.weights.gptq import InputMoment, gptq_round, supports
from dgh_deploy.runtime.base import flatten_outputs

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ---- BatchNorm folding ----------------------------------------------------------------------
def fold_into(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold an eval-mode BN into the conv (or linear) before it, in place."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(inv)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
    k = (gamma * inv).detach()
    w = conv.weight.detach()
    conv.weight = nn.Parameter(w * k.view(-1, *([1] * (w.ndim - 1))), requires_grad=False)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(k)
    conv.bias = nn.Parameter((b - bn.running_mean) * k + beta.detach(), requires_grad=False)


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int, int]:
    """A copy of ``module`` with every BN that directly follows a conv folded into it.

    Returns (module, folded, total BN layers). Uses torch.fx to find conv -> BN edges whose
    conv output feeds only the BN; a model fx cannot trace falls back to conv/BN pairs that
    sit next to each other in an ``nn.Sequential``.
    """
    module = copy.deepcopy(module).eval()
    total = sum(isinstance(m, _PLAIN_BN) for m in module.modules())
    try:
        return (*_fold_fx(module), total)
    except Exception:  # fx raises many types on untraceable code
        return (*_fold_sequential(module), total)


def _fold_fx(module: nn.Module) -> tuple[nn.Module, int]:
    import torch.fx as fx

    gm = fx.symbolic_trace(module)
    mods = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), _PLAIN_BN):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and isinstance(mods.get(prev.target), _CONVS)
                and len(prev.users) == 1):
            continue
        fold_into(mods[prev.target], mods[node.target])
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, folded


def _fold_sequential(module: nn.Module) -> tuple[nn.Module, int]:
    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            if isinstance(seq._modules[a], _CONVS) and isinstance(seq._modules[b], _PLAIN_BN):
                fold_into(seq._modules[a], seq._modules[b])
                seq._modules[b] = nn.Identity()
                folded += 1
    return module, folded


# ---- quantizers -------------------------------------------------------------------------------
class ActQuant(nn.Module):
    """Per-tensor activation quantizer: observes during calibration, then rounds."""

    def __init__(self, grid: QuantGrid, name: str) -> None:
        super().__init__()
        self.grid, self.name = grid, name
        self.mode = "off"  # off | range | counts | quant
        self.hist = Histogram()
        self.qparams: tuple[torch.Tensor, ...] | None = None
        self.range: tuple[float, float] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "quant":
            assert self.qparams is not None
            return self.grid.fake_quant(x, *(t.to(x.device) for t in self.qparams))
        if self.mode == "range":
            self.hist.observe_range(x)
        elif self.mode == "counts":
            self.hist.observe_counts(x)
        return x

    def calibrate(self, method: str, percentile: float, headroom: float = 1.0) -> None:
        lo, hi = with_headroom(estimate_range(self.hist, method, self.grid, percentile), headroom)
        self.range = (lo, hi)
        self.qparams = self.grid.params(torch.tensor(lo), torch.tensor(hi))
        self.hist = Histogram()  # the counts are not needed any more


class QuantLayer(nn.Module):
    """A conv or linear layer whose input and weights are fake-quantized."""

    def __init__(self, layer: nn.Module, name: str, w_grid: QuantGrid, a_grid: QuantGrid, per_channel: bool,
                 weight_method: str, rounding: str = "nearest") -> None:
        super().__init__()
        self.layer = layer
        self.act = ActQuant(a_grid, name)
        w = layer.weight.detach()
        rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
        lo, hi = rows.amin(1), rows.amax(1)
        if weight_method == "mse":
            lo, hi = mse_range(rows, lo, hi, w_grid)
        scale, zero, qmin, qmax = w_grid.params(lo, hi)
        shape = (-1, *([1] * (w.ndim - 1))) if per_channel else (1,) * w.ndim
        self.w_qparams = tuple(t.reshape(shape) for t in (scale, zero, qmin, qmax))
        self.float_weight = w.clone()
        self.w_grid = w_grid
        self.quant_weight = w_grid.fake_quant(w, *self.w_qparams)
        self.moment = InputMoment() if rounding == "gptq" and supports(layer) else None
        self.observe_mean = False
        self.observe_moment = False
        self._input_sum: torch.Tensor | None = None  # per input channel, float64
        self._input_count = 0

    def use_quant_weights(self, on: bool) -> None:
        self.layer.weight = nn.Parameter(self.quant_weight if on else self.float_weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe_mean:
            self._observe(x)
        x = self.act(x)
        if self.observe_moment and self.moment is not None:
            self.moment.add(self.layer, x)
        return self.layer(x)

    def round_weights(self) -> None:
        """GPTQ-round the weights on the observed inputs (round-to-nearest stays otherwise)."""
        if self.moment is None:
            return
        rows = tuple(t.reshape(-1, 1).double() for t in self.w_qparams)
        self.quant_weight = gptq_round(self.float_weight, self.moment,
                                       lambda cols: self.w_grid.fake_quant(cols, *rows)).float()
        self.moment = None

    def _observe(self, x: torch.Tensor) -> None:
        """Sum the input per channel (dim 1 for convs, the last dim for linear layers)."""
        x = x.detach().double()
        flat = x.movedim(1, -1) if isinstance(self.layer, _CONVS) else x
        flat = flat.reshape(-1, flat.shape[-1])
        s = flat.sum(0)
        self._input_sum = s if self._input_sum is None else self._input_sum + s
        self._input_count += flat.shape[0]

    def correct_bias(self) -> torch.Tensor | None:
        """Bias -= E[(W_q - W) x] over the observed inputs; returns the correction (or None if none seen).

        Uses the per-channel input mean, so a conv's zero padding counts as data: the border
        pixels' share of the shift is slightly off, as in MCT's correction.
        """
        if self._input_sum is None or self._input_count == 0:
            return None
        mean = (self._input_sum / self._input_count).float()
        delta = self.quant_weight - self.float_weight
        if isinstance(self.layer, _CONVS):
            groups = self.layer.groups
            per_in = delta.flatten(2).sum(2)  # out x in/groups: the kernel sees the mean everywhere
            out_c, in_g = per_in.shape
            shift = torch.bmm(per_in.view(groups, out_c // groups, in_g), mean.view(groups, in_g, 1)).flatten()
        else:
            shift = delta @ mean
        bias = self.layer.bias.detach() if self.layer.bias is not None else torch.zeros_like(shift)
        self.layer.bias = nn.Parameter(bias - shift, requires_grad=False)
        self._input_sum, self._input_count = None, 0
        return shift


class QuantOutputs(nn.Module):
    """The network output quantized too: a fully integer pipeline ends in integers."""

    def __init__(self, net: nn.Module, a_grid: QuantGrid, n_outputs: int) -> None:
        super().__init__()
        self.net = net
        self.out_quant = nn.ModuleList(ActQuant(a_grid, f"output{i}") for i in range(n_outputs))

    def forward(self, x: torch.Tensor) -> Any:
        outs = flatten_outputs(self.net(x))
        res = [q(o) for q, o in zip(self.out_quant, outs, strict=True)]
        return res[0] if len(res) == 1 else res


def quantize_layers(net: nn.Module, w_grid: QuantGrid, a_grid: QuantGrid, per_channel: bool,
                    weight_method: str, rounding: str = "nearest") -> list[QuantLayer]:
    """Swap every conv and linear layer of ``net`` for a :class:`QuantLayer`, in place."""
    layers = []
    targets = [(n, m) for n, m in net.named_modules() if isinstance(m, (*_CONVS, nn.Linear))]
    for name, m in targets:
        q = QuantLayer(m, name, w_grid, a_grid, per_channel, weight_method, rounding)
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, q)
        layers.append(q)
    return layers


def act_quantizers(model: nn.Module) -> Iterable[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]
