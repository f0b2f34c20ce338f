"""Channel pruning by keep ratio per coupling group, with channels physically removed.

For every coupling group whose keep ratio is below 1, the channels to keep are chosen by weight
magnitude: each member layer scores its output channels by the L2 norm of their weights, divided by
the layer's mean score so that one wide layer does not decide for the group, and the scores are
summed over the members (times |γ| of the BatchNorm that follows, where there is one, since BN can
silence a channel). Torch-Pruning's dependency graph then removes the weakest channels from every
coupled tensor: the members and their BatchNorms, depthwise convs, and the consumers' inputs. The
model is really smaller and faster afterwards.

The number of channels kept is `search_spaces.knobs.kept_channels`, the same count the size
predictor uses; `prune_` checks every pruned layer's shape against `pruned_channels`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from search_spaces.graph import ModelGraph
from search_spaces.knobs import kept_channels
from search_spaces.plan import pruned_channels

__all__ = ["channel_importance", "prune_"]


def channel_importance(model: nn.Module, graph: ModelGraph, group_id: int) -> Tensor:
    """Importance of each channel of a coupling group (higher is kept first)."""
    group = graph.groups[group_id]
    score = torch.zeros(group.channels)
    for name in group.layers:
        weight = model.get_submodule(name).weight.detach()
        norms = weight.reshape(weight.shape[0], -1).norm(dim=1).cpu()
        bn_name = graph.layers[name].batchnorm
        if bn_name is not None:
            bn = model.get_submodule(bn_name)
            if bn.affine:
                norms = norms * bn.weight.detach().abs().cpu()
        score += norms / norms.mean().clamp(min=1e-12)
    return score


def prune_(
    model: nn.Module,
    graph: ModelGraph,
    keeps: Mapping[int, float],
    example_inputs: tuple[Tensor, ...],
) -> None:
    """Remove channels in place so that every group keeps `kept_channels(channels, keep)`.

    Args:
        model: the model `graph` was discovered from, unpruned.
        graph: its graph.
        keeps: keep ratio per coupling group id (groups absent or at 1.0 are left alone).
        example_inputs: inputs to trace the dependency graph with.

    Raises:
        ValueError: a group with keep < 1 is not prunable.
    """
    import torch_pruning as tp

    todo = {gid: keep for gid, keep in keeps.items() if keep < 1.0}
    if not todo:
        return
    for gid in todo:
        if not graph.groups[gid].prunable:
            raise ValueError(f"coupling group {gid} cannot be pruned: {graph.groups[gid].reason}")
    # Scores come from the unpruned weights, before any group is touched.
    removals = {}
    for gid, keep in todo.items():
        group = graph.groups[gid]
        n_keep = kept_channels(group.channels, keep)
        order = channel_importance(model, graph, gid).argsort(descending=True)
        removals[gid] = sorted(order[n_keep:].tolist())
    was_training = model.training
    model.eval()
    with torch.enable_grad(), contextlib.redirect_stdout(io.StringIO()):
        dependencies = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_inputs if len(example_inputs) > 1 else example_inputs[0],
            verbose=False,
        )
        for gid, idxs in removals.items():
            root = model.get_submodule(graph.groups[gid].layers[0])
            pruner = dependencies.get_pruner_of_module(root)
            dependencies.get_pruning_group(root, pruner.prune_out_channels, idxs=idxs).prune()
    model.train(was_training)
    _check_shapes(model, graph, keeps)


def _check_shapes(model: nn.Module, graph: ModelGraph, keeps: Mapping[int, float]) -> None:
    for name, spec in graph.layers.items():
        c_out, c_in = pruned_channels(spec, graph, keeps)
        weight = model.get_submodule(name).weight
        groups = getattr(model.get_submodule(name), "groups", 1)
        got = (weight.shape[0], weight.shape[1] * groups)
        if got != (c_out, c_in):
            raise RuntimeError(
                f"pruning left '{name}' with {got[0]} out / {got[1]} in channels where the size "
                f"model expects {c_out} / {c_in}; please report this model"
            )
