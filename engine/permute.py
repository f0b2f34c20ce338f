"""PQF's channel permutation: reorder a coupling group's channels so that VQ loses less.

Permuting the output channels of a group's layers (with their BatchNorms) and, the same way, the
input channels of its consumers leaves the model's function unchanged. It does change how the
consumers' rows are cut into subvectors when a subvector spans several input channels (m > K²: a
1×1 conv with m = 4, a 3×3 conv with m = 18); with m ≤ K² it changes nothing.

PQF chooses the permutation that lowers the determinant of the consumers' subvector covariance:
channels are first dealt into the subvector positions greedily by variance (largest first, each to
the position with the smallest product of variances so far), then random pairs of channels are
swapped and a swap is kept when the log-determinant falls.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from search_spaces.graph import ModelGraph

__all__ = ["PermutationError", "permute_group_", "pqf_permutation", "subvector_logdet"]

_EPS = 1e-8


class PermutationError(ValueError):
    """The group's channels cannot be permuted safely (a concatenation, a grouped consumer)."""


def _check_permutable(graph: ModelGraph, group_id: int) -> None:
    group = graph.groups[group_id]
    for name in group.consumers:
        spec = graph.layers[name]
        if len(spec.inputs) != 1:
            raise PermutationError(f"'{name}' reads several coupling groups (a concatenation)")
        if spec.groups != 1:
            raise PermutationError(f"'{name}' is a grouped conv")


def _consumer_index(perm: Tensor, multiplicity: int) -> Tensor:
    """Input positions of a consumer, permuted: channel c covers c·mult … c·mult + mult − 1."""
    return (perm[:, None] * multiplicity + torch.arange(multiplicity)).reshape(-1)


@torch.no_grad()
def permute_group_(model: nn.Module, graph: ModelGraph, group_id: int, perm: Tensor) -> None:
    """Reorder the channels of coupling group `group_id` in place, keeping the function.

    Channel i of the result is channel perm[i] of the original.

    Raises:
        PermutationError: a consumer reads several groups or is a grouped conv.
    """
    _check_permutable(graph, group_id)
    group = graph.groups[group_id]
    for name in group.layers:
        layer = model.get_submodule(name)
        layer.weight.copy_(layer.weight[perm])  # a depthwise conv's inputs are its outputs
        if layer.bias is not None:
            layer.bias.copy_(layer.bias[perm])
        bn_name = graph.layers[name].batchnorm
        if bn_name is not None:
            bn = model.get_submodule(bn_name)
            for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                if tensor is not None:
                    tensor.copy_(tensor[perm])
    for name in group.consumers:
        layer = model.get_submodule(name)
        index = _consumer_index(perm, graph.layers[name].inputs[0].multiplicity)
        layer.weight.copy_(layer.weight[:, index])


def _consumer_blocks(weight: Tensor, m: int) -> tuple[Tensor, int]:
    """A consumer's weight as (C_out, C_in, K) and how many input channels one subvector spans."""
    w = weight.detach().reshape(weight.shape[0], weight.shape[1], -1)
    kernel = w.shape[2]
    return w, m // kernel if m % kernel == 0 else 1


def subvector_logdet(weight: Tensor, m: int, perm: Tensor | None = None) -> float:
    """log det of the covariance of a consumer's subvectors after permuting its input channels."""
    w, _ = _consumer_blocks(weight, m)
    if perm is not None:
        w = w[:, perm]
    x = w.reshape(-1, m)
    x = x - x.mean(0)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    return torch.logdet(cov + _EPS * torch.eye(m)).item()


def pqf_permutation(
    consumers: Mapping[str, tuple[Tensor, int]], channels: int, *, swaps: int = 2000, seed: int = 0
) -> Tensor:
    """The permutation PQF would choose for a group, given its consumers' weights and m.

    Args:
        consumers: consumer name → (weight, m) for every consumer quantized with m > K².
        channels: channels in the group.
        swaps: random pair swaps tried after the greedy start.
        seed: seeds the swaps.

    Returns:
        A permutation of range(channels) (identity when no consumer benefits).
    """
    spans = {name: _consumer_blocks(w, m)[1] for name, (w, m) in consumers.items()}
    useful = {n: v for n, v in consumers.items() if spans[n] > 1 and channels % spans[n] == 0}
    if not useful:
        return torch.arange(channels)
    span = max(spans[n] for n in useful)
    variance = sum(
        w.detach().reshape(w.shape[0], w.shape[1], -1).var(dim=(0, 2)) for w, _ in useful.values()
    )
    # Greedy start: deal channels, largest variance first, into the `span` positions of a
    # subvector, each to the position whose product of variances is smallest so far.
    slots: list[list[int]] = [[] for _ in range(span)]
    log_product = torch.zeros(span)
    capacity = channels // span
    for c in variance.argsort(descending=True).tolist():
        open_slots = [i for i in range(span) if len(slots[i]) < capacity]
        best = min(open_slots, key=lambda i: log_product[i].item())
        slots[best].append(c)
        log_product[best] += torch.log(variance[c] + _EPS)
    # Channel in block b, position p sits at index b·span + p.
    perm = torch.tensor([slots[p][b] for b in range(capacity) for p in range(span)])

    def cost(candidate: Tensor) -> float:
        return sum(subvector_logdet(w, m, candidate) for w, m in useful.values())

    best_cost = cost(perm)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(swaps):
        i, j = torch.randint(channels, (2,), generator=generator).tolist()
        if i // span == j // span:
            continue  # two channels of one subvector: the same set, the same covariance
        trial = perm.clone()
        trial[i], trial[j] = perm[j], perm[i]
        trial_cost = cost(trial)
        if trial_cost < best_cost:
            perm, best_cost = trial, trial_cost
    return perm
