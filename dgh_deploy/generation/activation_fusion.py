"""BN layers followed by a ReLU that only they feed: the ReLU folded into the BN layer's kernels.

A ReLU is a pass over memory each way (the clamp forward; in backward a masked copy of the
gradient); folded into the BN layer's own fused loops (:mod:`bn_kernels`) it costs nothing
extra: the forward clamps as it writes, the backward recomputes the mask from the BN input it
reads anyway. Found in the graph ``torch.fx`` traces of the generation model (the BN layer's one
user is ``nn.ReLU``, ``F.relu``, ``torch.relu`` or ``.relu()``); a model fx cannot trace
(data-dependent control flow, as Ultralytics' heads) keeps its ReLUs, with the same results.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import fx, nn

from dgh_deploy.errors import exc_reason
from dgh_deploy.generation.stats import StatsBatchNorm

log = logging.getLogger("dgh_deploy")

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_RELU_METHODS = ("relu", "relu_")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, StatsBatchNorm) or super().is_leaf_module(m, module_qualified_name)


def fuse_relus(module: nn.Module) -> tuple[nn.Module, int]:
    """``module`` with the ReLU after each :class:`StatsBatchNorm` that only a ReLU reads folded into
    that layer, and how many were; ``module`` itself where there are none or fx cannot trace it."""
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # fx's refusals of dynamic Python are of many types
        log.debug("BN + ReLU fusion skipped: fx cannot trace the model (%s)", exc_reason(exc, 120))
        return module, 0
    calls = [n for n in graph.nodes if n.op == "call_module" and isinstance(module.get_submodule(n.target),
                                                                          StatsBatchNorm)]
    once = {t for t in (n.target for n in calls) if sum(c.target == t for c in calls) == 1}
    fused = 0
    for node in calls:
        users = list(node.users)
        if node.target not in once or len(users) != 1 or not _is_relu(users[0], module):
            continue
        users[0].replace_all_uses_with(node)
        graph.erase_node(users[0])
        module.get_submodule(node.target).relu = True
        fused += 1
    if not fused:
        return module, 0
    return fx.GraphModule(module, graph, class_name=type(module).__name__), fused


def _is_relu(node: fx.Node, module: nn.Module) -> bool:
    if node.op == "call_module":
        return type(module.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS  # any further argument is ``inplace``
    return node.op == "call_method" and node.target in _RELU_METHODS
