"""Each layer's weight-compression options under fixed keep ratios, with their exact sizes.

The planner's separable view of a search space: with the keep ratios of the coupling groups fixed,
a layer's size depends on its own choice alone (size is additive over layers), so the space is a
list of options per layer, each with a size in bits. The exact solver picks one option per layer;
the proxy objective scores each option once.

An option is a `LayerPlan` without activation bits, keep or learning rate (those stay at their
defaults here: 32 bits, the fixed keep, ×1). Options that store the same thing are one option:
a VQ choice whose k exceeds what the layer can use (`k_eff`, see `predictors.size`) is the same
as the one with the smallest k that reaches that k_eff, which is the one kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from predictors.size import PlanBatch, layer_bits
from search_spaces.plan import LayerPlan, Plan
from search_spaces.space import SearchSpace

__all__ = ["LayerOptions", "layer_options", "options_plan"]


@dataclass(frozen=True)
class LayerOptions:
    """One layer's distinct weight-compression options.

    Attributes:
        name: the layer.
        plans: the options, as layer plans (keep set to the fixed ratio of the layer's group).
        bits: each option's size in bits (codes or packed weights, codebook, projection, scales,
            bias and BatchNorm), by the size convention.
    """

    name: str
    plans: tuple[LayerPlan, ...]
    bits: np.ndarray

    def __len__(self) -> int:
        return len(self.plans)


def _candidates(space: SearchSpace, name: str, keep: float) -> list[LayerPlan]:
    choices = space.layers[name]
    plans = []
    for method in choices.methods:
        if method == "vq":
            for m in choices.m:
                for fraction in choices.d_tilde_fractions:
                    d = max(1, round(fraction * m))
                    for k in choices.k:
                        plans.append(LayerPlan(k=k, m=m, d_tilde=None if d == m else d, keep=keep))
        elif method == "bits":
            plans.extend(LayerPlan(weight_bits=b, keep=keep) for b in choices.weight_bits)
        else:
            plans.append(LayerPlan(keep=keep))
    return plans


def layer_options(
    space: SearchSpace, keeps: Mapping[int, float] | None = None
) -> dict[str, LayerOptions]:
    """Every layer's distinct options in `space`, sized with the groups' keep ratios `keeps`
    (group id → ratio; a group not named keeps all its channels).

    Returns:
        layer name → `LayerOptions`, in the model's order.
    """
    graph = space.graph
    keeps = dict(keeps or {})
    names = list(graph.layers)
    candidates = {}
    for name in names:
        group = graph.layers[name].group
        keep = keeps.get(group, 1.0) if group is not None else 1.0
        candidates[name] = _candidates(space, name, keep)
    rows = max(len(c) for c in candidates.values())
    # One batch sizes every option of every layer at once: row i holds each layer's i-th option
    # (its last one repeated where it has fewer), the keeps are those given.
    shape = (rows, len(names))
    k = np.zeros(shape, dtype=np.int64)
    m = np.ones(shape, dtype=np.int64)
    d = np.ones(shape, dtype=np.int64)
    weight_bits = np.full(shape, 32, dtype=np.int64)
    for j, name in enumerate(names):
        for i in range(rows):
            option = candidates[name][min(i, len(candidates[name]) - 1)]
            if option.k is not None:
                k[i, j], m[i, j], d[i, j] = option.k, option.m, option.clustering_dim
            elif option.weight_bits is not None:
                weight_bits[i, j] = option.weight_bits
    keep = np.ones((rows, len(graph.groups)))
    for gid, ratio in keeps.items():
        keep[:, gid] = ratio
    batch = PlanBatch(k=k, m=m, d_tilde=d, weight_bits=weight_bits, keep=keep)
    parts = layer_bits(graph, batch)
    options = {}
    for j, name in enumerate(names):
        seen: dict[tuple, int] = {}
        plans, bits = [], []
        for i, option in enumerate(candidates[name]):
            k_eff = int(parts["k_eff"][i, j])
            key = (option.method, k_eff or option.weight_bits, option.m, option.clustering_dim)
            if key in seen:
                continue
            seen[key] = len(plans)
            plans.append(option)
            bits.append(int(parts["total"][i, j]))
        options[name] = LayerOptions(name, tuple(plans), np.asarray(bits, dtype=np.int64))
    return options


def options_plan(
    space: SearchSpace, options: Mapping[str, LayerOptions], chosen: Mapping[str, int], **extra
) -> Plan:
    """The plan that takes option `chosen[name]` for each layer (layers left as they are are
    omitted). `extra` goes to `Plan` (budget, provenance)."""
    graph = space.graph
    layers = {}
    for name in graph.layers:
        option = options[name].plans[chosen[name]]
        if option != LayerPlan():
            layers[name] = option
    return Plan(layers=layers, model=graph.model_name, fingerprint=graph.fingerprint, **extra)
