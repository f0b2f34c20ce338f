"""Who reads a planned layer's output: the `torch.fx` view that placing int8 kernels needs.

An int8 kernel's output is quantized only where the model quantizes that very tensor, so placing
one asks what reads a layer's output: through a BatchNorm that alone reads it (merged into the
kernel) and a ReLU (a quantizer before it gives the same levels as after it), are the readers
int8 layers whose input quantizers agree? The trace stops at planned layers and at modules
without children; a model it cannot trace gets no answer ({}), and then no layer is fused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from engine.layers import FoldedBatchNorm, PlannedLayer
from search_spaces.methods.uniform8 import scale_and_zero_point

__all__ = ["LayerOutput", "layer_outputs"]

logger = logging.getLogger("compplan")

_RELUS = (nn.ReLU, nn.ReLU6)
_BATCHNORMS = (nn.modules.batchnorm._BatchNorm, FoldedBatchNorm)


@dataclass(frozen=True)
class LayerOutput:
    """Where a planned layer's output goes.

    Attributes:
        batchnorm: the BatchNorm (or folded one) that alone reads the output and is called once
            (merged into an int8 kernel), or None.
        readers_quantize: the (scale, zero point) with which every reader, past that BatchNorm
            and at most a ReLU, quantizes it, where all readers are int8 layers whose u8 input
            quantizers agree; None elsewhere (a residual Add, a pooling, the model's output).
    """

    batchnorm: str | None
    readers_quantize: tuple[float, int] | None


class _Tracer(fx.Tracer):
    """Stops at planned layers and at modules without children."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, PlannedLayer) or next(m.children(), None) is None


def layer_outputs(model: nn.Module, names: list[str]) -> dict[str, LayerOutput]:
    """`LayerOutput` of each named planned layer that the trace shows called once; {} where the
    model cannot be traced (any model a user brings may defeat the tracer)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as error:
        logger.debug("int8 outputs left unquantized: the model cannot be traced (%s)", error)
        return {}
    calls: dict[str, int] = {}
    nodes: dict[str, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
            nodes[node.target] = node
    return {name: _output_of(model, nodes[name], calls) for name in names if calls.get(name) == 1}


def _output_of(model: nn.Module, node: fx.Node, calls: dict[str, int]) -> LayerOutput:
    batchnorm = None
    node, users = _past_identities(model, node)
    if (
        len(users) == 1
        and _is_module(model, users[0], _BATCHNORMS)
        and calls.get(users[0].target) == 1
        and len(users[0].args) == 1
    ):
        batchnorm, node = users[0].target, users[0]
        node, users = _past_identities(model, node)
    if len(users) == 1 and _is_relu(model, users[0]):
        node, users = _past_identities(model, users[0])
    params = set()
    for user in users:
        if not _is_module(model, user, PlannedLayer) or user.args != (node,) or user.kwargs:
            return LayerOutput(batchnorm, None)
        reader = model.get_submodule(user.target)
        quantizer = reader.act_quant
        if not reader.int8 or not hasattr(quantizer, "zero_point"):
            return LayerOutput(batchnorm, None)
        params.add(scale_and_zero_point(quantizer))
    return LayerOutput(batchnorm, params.pop() if len(params) == 1 else None)


def _past_identities(model: nn.Module, node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """(`node`, or the last `nn.Identity` it alone feeds, in a chain; that node's readers): a
    BatchNorm merged already leaves an Identity in its place."""
    users = list(node.users)
    while len(users) == 1 and _is_module(model, users[0], nn.Identity):
        node = users[0]
        users = list(node.users)
    return node, users


def _is_module(model: nn.Module, node: fx.Node, kind: type | tuple[type, ...]) -> bool:
    return node.op == "call_module" and isinstance(model.get_submodule(node.target), kind)


def _is_relu(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        if isinstance(module, nn.Hardtanh):  # ReLU6 is one
            return module.min_val == 0
        return isinstance(module, _RELUS)
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu, F.relu6)
    return node.op == "call_method" and node.target == "relu"
