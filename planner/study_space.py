"""The study's parameters: one option per layer from its efficient frontier, its activation bits,
and one keep ratio per prunable group.

`SearchSpace` offers one parameter per knob (method, k, m, d̃ fraction, bits, …): 147 for
ResNet-18. Most of those combinations are never worth taking: an option that is larger than
another and distorts more (by the proxy, at keep 1) is dominated. `StudySpace` keeps, per layer,
the undominated options only (this is also where LR²VQ's d̃ estimate narrows d̃: a d̃ whose
low-rank loss is not paid back by easier clustering drops out), ordered from largest to smallest,
and offers them as one categorical parameter per layer. A search then has about two parameters
per layer, a sampler learns faster, and the storage holds fewer rows.

Parameter names: "<layer>/option" (the position on the layer's frontier, 0 the largest option;
`labels` names them, e.g. "vq k=256 m=8 d=4", "bits 4", "none"), "<layer>/act_bits" and
"group<id>/keep". Parameters with one choice are constants and omitted. The option is an integer,
not a label, because neighbours on the frontier are alike: at 300 trials on ResNet-18 at 20×, TPE
came within 57% of the exact optimum with integers and 193% with labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from planner.errors import PlannerError
from planner.exact import undominated
from planner.options import LayerOptions
from planner.proxy import ProxyTable
from predictors.size import weight_arrays
from search_spaces.methods import activation_method_for, weight_method
from search_spaces.plan import LayerPlan, Plan
from search_spaces.space import SearchSpace

__all__ = ["StudySpace", "option_label"]


def option_label(plan: LayerPlan) -> str:
    """A short readable name of a weight-compression option (its unit's `label`)."""
    if plan.weights is None:
        return "none"
    return weight_method(plan.method).label(plan.weights)


class StudySpace:
    """Per-layer efficient options, activation bits and group keep ratios as study parameters.

    Args:
        space: the knob space (its activation bits and keep ratios are used as they are).
        options: each layer's options at keep 1 (`planner.options.layer_options(space)`).
        table: their proxy errors (`planner.proxy.proxy_table`).
    """

    def __init__(self, space: SearchSpace, options: Mapping[str, LayerOptions], table: ProxyTable):
        self.space = space
        self.graph = space.graph
        self.options = options
        self.frontier: dict[str, list[int]] = {}
        for name, layer_options in options.items():
            kept = undominated(table.errors[name], [layer_options.bits])
            # Largest (least distorting) first: the first choice is the gentlest plan.
            self.frontier[name] = sorted(kept.tolist(), key=lambda i: -layer_options.bits[i])
        self.labels = {
            name: [option_label(options[name].plans[i]) for i in indices]
            for name, indices in self.frontier.items()
        }
        self.distributions = self._distributions()

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        result = {}
        for name in self.graph.layers:
            if len(self.labels[name]) > 1:
                # An ordinal: neighbours on the frontier are alike in size and distortion,
                # which TPE and NSGA-II exploit; unordered labels they cannot.
                result[f"{name}/option"] = IntDistribution(0, len(self.labels[name]) - 1)
            act = self.space.layers[name].act_bits
            if len(act) > 1:
                result[f"{name}/act_bits"] = CategoricalDistribution(act)
        for gid, choices in self.space.group_keep.items():
            if len(choices) > 1:
                result[f"group{gid}/keep"] = CategoricalDistribution(choices)
        return result

    @property
    def size(self) -> int:
        """Number of parameters."""
        return len(self.distributions)

    def decode(self, params: Mapping[str, Any]) -> Plan:
        """The plan a set of parameter values stands for (missing ones take the first choice).

        Raises:
            PlannerError: a value outside its parameter's choices (a trial of a study made for
                another model, or edited).
        """
        for key, value in params.items():
            if key in self.distributions and not _holds(self.distributions[key], value):
                raise PlannerError(
                    f"the trial's parameter {key} = {value!r} is not among this model's choices "
                    "for it: its study was made for another model or edited; start a new study "
                    "(--fresh, or another --study NAME)"
                )
        keeps = {
            gid: params.get(f"group{gid}/keep", choices[0])
            for gid, choices in self.space.group_keep.items()
        }
        layers = {}
        for name, spec in self.graph.layers.items():
            position = params.get(f"{name}/option", 0)
            option = self.options[name].plans[self.frontier[name][position]]
            keep = keeps.get(spec.group, 1.0) if spec.group is not None else 1.0
            choices = self.space.layers[name]
            act_bits = params.get(f"{name}/act_bits", choices.act_bits[0])
            plan = LayerPlan(
                weights=option.weights,
                activations=activation_method_for(choices.act_method, act_bits).config(act_bits),
                keep=keep,
            )
            if plan != LayerPlan():
                layers[name] = plan
        return Plan(layers=layers, model=self.graph.model_name, fingerprint=self.graph.fingerprint)

    def frontier_arrays(self) -> dict[str, np.ndarray]:
        """The frontier options as `PlanBatch` columns (`predictors.size.weight_arrays`), each
        positions × layers (row i: every layer's i-th option, its last one past its end)."""
        names = list(self.graph.layers)
        rows = max((len(self.frontier[name]) for name in names), default=0)
        configs = [
            [
                self.options[name]
                .plans[self.frontier[name][min(i, len(self.frontier[name]) - 1)]]
                .weights
                for name in names
            ]
            for i in range(rows)
        ]
        return weight_arrays(configs)

    def params_of(
        self, chosen: Mapping[str, int], *, act_bits: int | Mapping[str, int] = 32
    ) -> dict[str, Any]:
        """Parameters for option `chosen[name]` (an index into the layer's `LayerOptions`) per
        layer, keep 1 and `act_bits` (one for all, or per layer) where allowed (the exact
        solver's answer, as a trial)."""
        params: dict[str, Any] = {}
        for name, index in chosen.items():
            if f"{name}/option" in self.distributions:
                if index not in self.frontier[name]:
                    raise ValueError(f"layer {name}: option {index} is dominated")
                params[f"{name}/option"] = self.frontier[name].index(index)
            key = f"{name}/act_bits"
            bits = act_bits if isinstance(act_bits, int) else act_bits[name]
            if key in self.distributions and bits in self.distributions[key].choices:
                params[key] = bits
        for gid, choices in self.space.group_keep.items():
            if f"group{gid}/keep" in self.distributions and 1.0 in choices:
                params[f"group{gid}/keep"] = 1.0
        return params


def _holds(distribution, value) -> bool:
    """Whether `value` is one of `distribution`'s choices (an int range or categorical)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    try:
        number = int(value)
    except (TypeError, ValueError):
        return False
    return number == value and distribution.low <= number <= distribution.high
