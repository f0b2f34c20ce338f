"""Each layer's weight-compression options under fixed keep ratios, with their exact sizes.

The planner's separable view of a search space: with the keep ratios of the coupling groups fixed,
a layer's size depends on its own choice alone (size is additive over layers), so the space is a
list of options per layer, each with a size in bits. The exact solver picks one option per layer;
the proxy objective scores each option once.

An option is a `LayerPlan` without activation bits or learning rate (those stay at their
defaults here: 32 bits, ×1), with the fixed keep. The options are the candidates of each of the
layer's weight methods (`WeightMethod.candidates`), plus the dense weight where "none" is
allowed. Options that store the same thing are one option (`WeightMethod.storage_key`): a VQ
choice whose k exceeds what the layer can use (`k_eff`) is the same as the one with the smallest
k that reaches that k_eff, which is the one kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from predictors.size import PlanBatch, layer_bits, weight_arrays
from search_spaces.methods import WeightConfig, weight_method
from search_spaces.plan import LayerPlan, Plan
from search_spaces.space import SearchSpace

__all__ = ["LayerOptions", "layer_options", "options_plan"]


@dataclass(frozen=True)
class LayerOptions:
    """One layer's distinct weight-compression options.

    Attributes:
        name: the layer.
        plans: the options, as layer plans (keep set to the fixed ratio of the layer's group).
        bits: each option's size in bits (the weight as its method stores it, bias and
            BatchNorm), by the size convention.
    """

    name: str
    plans: tuple[LayerPlan, ...]
    bits: np.ndarray

    def __len__(self) -> int:
        return len(self.plans)


def _candidates(space: SearchSpace, name: str) -> list[WeightConfig | None]:
    choices = space.layers[name]
    configs: list[WeightConfig | None] = []
    for method in choices.methods:
        if method == "none":
            configs.append(None)
        else:
            configs.extend(weight_method(method).candidates(choices.of(method)))
    return configs


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
    candidates = {name: _candidates(space, name) for name in names}
    rows = max(len(c) for c in candidates.values())
    # One batch sizes every option of every layer at once: row i holds each layer's i-th option
    # (its last one repeated where it has fewer), the keeps are those given.
    configs = [[candidates[n][min(i, len(candidates[n]) - 1)] for n in names] for i in range(rows)]
    keep = np.ones((rows, len(graph.groups)))
    for gid, ratio in keeps.items():
        keep[:, gid] = ratio
    parts = layer_bits(graph, PlanBatch(**weight_arrays(configs), keep=keep))
    options = {}
    for j, name in enumerate(names):
        spec = graph.layers[name]
        keep_j = keeps.get(spec.group, 1.0) if spec.group is not None else 1.0
        c_out, row = int(parts["c_out"][0, j]), int(parts["row_length"][0, j])
        seen: set[tuple] = set()
        plans, bits = [], []
        for i, config in enumerate(candidates[name]):
            key = (
                ("none",)
                if config is None
                else (
                    config.method,
                    *weight_method(config.method).storage_key(
                        config, out_channels=c_out, row_length=row
                    ),
                )
            )
            if key in seen:
                continue
            seen.add(key)
            plans.append(LayerPlan(weights=config, keep=keep_j))
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
