"""Merging a folded BatchNorm into the convolution it follows, as inference runtimes do.

A deployed model's BatchNorms are `FoldedBatchNorm`s: a scale and a shift per channel, run as
their own elementwise step after the layer. A runtime (ONNX Runtime, TensorRT, XNNPACK, oneDNN)
merges such a step into the convolution whose output it reads: the weight is scaled per output
channel and the shift becomes (part of) the bias, so the step costs nothing. `merge_batchnorms_`
does the same to the deployed form, so that its time is what a runtime runs and is the sum of its
layers' times plus the ops between them (the layers are profiled alone, without a BatchNorm).

A merge is only correct where the BatchNorm is the convolution's *only* reader: `y = conv(x);
z = bn(y) + y` must keep both. The model is traced (`torch.fx`) to see every reader; where the
trace fails (data-dependent control flow in a user's block) the one pattern that needs no trace
is merged: a convolution followed by its BatchNorm in an `nn.Sequential`, which hands each output
to the next module only. Linear layers are left alone: a BatchNorm1d normalizes dimension 1,
which is a Linear's features only for 2-D inputs, and the deployed form does not know the shapes.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import fx, nn

from engine.layers import FoldedBatchNorm
from search_spaces.discover import shared_parameters

__all__ = ["merge_batchnorms_"]

logger = logging.getLogger("compplan")

_CONVS = (nn.Conv1d, nn.Conv2d)


def merge_batchnorms_(model: nn.Module) -> int:
    """Merge each `FoldedBatchNorm` that is the only reader of a Conv1d/Conv2d's output into
    that convolution's weight and bias, in place, and replace it by `nn.Identity`.

    The outputs are unchanged up to float rounding. A convolution called more than once, or
    whose weight another module shares, is left as it is (merging would change its other uses).

    Returns:
        How many BatchNorms were merged.
    """
    if not any(isinstance(m, FoldedBatchNorm) for m in model.modules()):
        return 0
    pairs = _traced_pairs(model)
    if pairs is None:
        pairs = _sequential_pairs(model)
    shared = shared_parameters(model)
    merged = 0
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        if id(conv.weight) in shared:
            continue
        _merge(conv, model.get_submodule(bn_name))
        model.set_submodule(bn_name, nn.Identity())
        merged += 1
    return merged


class _LeafTracer(fx.Tracer):
    """Traces through containers and blocks, stopping at modules without children (convs,
    folded BatchNorms, quantizers, activations): their calls are the graph's nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return next(m.children(), None) is None


def _traced_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    """(convolution, BatchNorm) names where the BatchNorm is the convolution's only reader and
    each is called once; None when the model cannot be traced."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as error:  # any model a user brings may defeat the tracer
        logger.debug("BatchNorm merging falls back to Sequential pairs: %s", error)
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _CONVS):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        reader = users[0]
        if (
            isinstance(model.get_submodule(reader.target), FoldedBatchNorm)
            and len(reader.args) == 1
            and not reader.kwargs
            and calls[node.target] == calls[reader.target] == 1
        ):
            pairs.append((node.target, reader.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) names that sit next to each other in an `nn.Sequential`, each
    in the model once."""
    counts: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        counts[id(module)] = counts.get(id(module), 0) + 1
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_key, conv), (bn_key, bn) in itertools.pairwise(children):
            if (
                isinstance(conv, _CONVS)
                and isinstance(bn, FoldedBatchNorm)
                and counts[id(conv)] == counts[id(bn)] == 1
            ):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + conv_key, prefix + bn_key))
    return pairs


def _merge(conv: nn.Module, bn: FoldedBatchNorm) -> None:
    """conv(x)·scale + shift as one convolution: the weight scaled per output channel, the bias
    scaled and shifted."""
    with torch.no_grad():
        scale, shift = bn.scale.detach(), bn.shift.detach()
        view = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.mul_(scale.view(view))
        bias = shift.clone() if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
