"""The proxy objective: each option's predicted distortion of the model's output, per layer.

The proxy is separable: a plan's distortion is the sum over layers of
`sensitivity_l · relative_weight_error_l(option)`, where
- `relative_weight_error` is ‖Ŵ − W‖² / ‖W‖² for the option's reconstruction Ŵ, as the option's
  weight method computes it (`WeightMethod.proxy_errors`: exact for b-bit weights, an estimate
  from the subvectors' spectrum for LR²VQ, see `search_spaces.methods.vq`);
- `sensitivity_l` is how much the model's output moves per unit of relative weight error in
  layer l: the relative squared change of the outputs on calibration inputs when W gets Gaussian
  noise of a small relative energy, divided by that energy (a first-order, HAWQ-like measure that
  needs one forward pass per layer). Without sensitivities every layer counts as 1.
Activation quantizers add their unit's price (`ActivationMethod.proxy_error`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from planner.options import LayerOptions
from search_spaces.attention import layer_weight
from search_spaces.methods import activation_method_for, weight_method
from search_spaces.methods.threads import one_thread

__all__ = ["ProxyObjective", "ProxyTable", "layer_sensitivities", "proxy_table"]

# Relative energy of the probe noise in the sensitivity measurement: small enough to stay in the
# linear regime, large enough to stay above float rounding.
_PROBE_ENERGY = 1e-3


def layer_sensitivities(
    model: nn.Module,
    inputs: Sequence[Tensor],
    layers: Sequence[str],
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Relative squared output change per unit of relative weight error, per layer.

    `inputs` are calibration batches (each a tensor, or a tuple for models with several inputs).
    The model is not changed (each layer's weight is restored after its probe). `progress`: a
    bar over the layers on stderr.
    """
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()

    def outputs() -> list[Tensor]:
        with torch.no_grad():
            return [model(*batch) if isinstance(batch, tuple) else model(batch) for batch in inputs]

    reference = outputs()
    scale = sum(float(r.double().square().sum()) for r in reference)
    result = {}
    for name in _bar(layers, "layer sensitivities", progress):
        weight = layer_weight(model, name)
        original = weight.detach().clone()
        noise = torch.randn(original.shape, generator=generator).to(original)
        energy = float(original.square().sum()) or 1.0
        noise *= math.sqrt(_PROBE_ENERGY * energy / float(noise.square().sum()))
        with torch.no_grad():
            weight.add_(noise)
        try:
            moved = outputs()
        finally:
            with torch.no_grad():
                weight.copy_(original)
        change = sum(
            float((a - b).double().square().sum()) for a, b in zip(moved, reference, strict=True)
        )
        result[name] = change / max(scale, 1e-30) / _PROBE_ENERGY
    return result


def _bar(items, label: str, enabled: bool, total: int | None = None):
    """`items`, with a progress bar over them on stderr where `enabled` (gone when done)."""
    from tqdm.auto import tqdm

    return tqdm(
        items, desc=label, total=total, unit="layer", disable=not enabled, leave=False,
        file=sys.stderr,
    )  # fmt: skip


@dataclass(frozen=True)
class ProxyTable:
    """Each option's proxy distortion, per layer: `errors[name][i]` is option i's weighted error.

    Attributes:
        errors: layer → array over that layer's options (same order as its `LayerOptions`).
        relative_errors: the same before weighting by sensitivity.
        sensitivities: layer → sensitivity (1.0 where none was measured).
    """

    errors: Mapping[str, np.ndarray]
    relative_errors: Mapping[str, np.ndarray]
    sensitivities: Mapping[str, float]

    def value(self, chosen: Mapping[str, int]) -> float:
        """The proxy of a plan given as layer → option index."""
        return float(sum(self.errors[name][i] for name, i in chosen.items()))


def proxy_table(
    model: nn.Module,
    options: Mapping[str, LayerOptions],
    *,
    sensitivities: Mapping[str, float] | None = None,
    progress: bool = False,
) -> ProxyTable:
    """Score every option of every layer (weights as they are in `model`, unpruned).
    `progress`: a bar over the layers on stderr."""
    with one_thread():  # small operations by the thousand: see search_spaces.methods.threads
        relative = _relative_errors(model, options, progress)
    weights = {name: float((sensitivities or {}).get(name, 1.0)) for name in options}
    return ProxyTable(
        errors={name: weights[name] * e for name, e in relative.items()},
        relative_errors=relative,
        sensitivities=weights,
    )


def _relative_errors(
    model: nn.Module, options: Mapping[str, LayerOptions], progress: bool
) -> dict[str, np.ndarray]:
    relative: dict[str, np.ndarray] = {}
    for name, layer_options in _bar(options.items(), "proxy table", progress, len(options)):
        weight = layer_weight(model, name).detach().float().cpu()
        errors = np.zeros(len(layer_options))  # a dense weight loses nothing
        by_method: dict[str, list[int]] = {}
        for i, option in enumerate(layer_options.plans):
            if option.weights is not None:
                by_method.setdefault(option.method, []).append(i)
        for method, indices in by_method.items():
            configs = [layer_options.plans[i].weights for i in indices]
            errors[indices] = weight_method(method).proxy_errors(weight, configs)
        relative[name] = errors
    return relative


class ProxyObjective:
    """The proxy of any plan of a space: weight compression, pruning and activation bits.

    `value(plan)` = Σ_layers s_l · (weight error of its option + activation error of its bits)
    + Σ_groups Σ_producers s_l · (share of the producer's weight energy in the pruned channels).
    - Weight errors come from the `ProxyTable` of the options at keep = 1 (a pruned layer's
      remaining weights are priced as if unpruned: the table is not rebuilt per keep ratio).
    - Pruning removes the channels the engine removes (lowest `channel_importance` first).
    - Activation errors are those of a Gaussian input (the activation unit's `proxy_error`).
    Lower is better; 0 is the uncompressed model.
    """

    def __init__(self, model: nn.Module, space, table: ProxyTable, options):
        from engine.pruning import channel_importance
        from search_spaces.knobs import kept_channels

        self.space = space
        self.table = table
        graph = space.graph
        self._index: dict[str, dict[tuple, int]] = {}
        for name, layer_options in options.items():
            spec = graph.layers[name]
            self._index[name] = {
                self._key(spec, plan): i for i, plan in enumerate(layer_options.plans)
            }
        self._pruning: dict[int, dict[float, float]] = {}
        for gid, choices in space.group_keep.items():
            group = graph.groups[gid]
            order = channel_importance(model, graph, gid).argsort()  # least important first
            costs = {}
            for ratio in choices:
                removed = order[: group.channels - kept_channels(group.channels, ratio)]
                cost = 0.0
                for name in group.layers:
                    weight = layer_weight(model, name).detach().double()
                    rows = weight.reshape(weight.shape[0], -1)
                    share = float(rows[removed].square().sum() / rows.square().sum().clamp(1e-30))
                    cost += table.sensitivities.get(name, 1.0) * share
                costs[ratio] = cost
            self._pruning[gid] = costs

    def _key(self, spec, plan) -> tuple:
        """What the option stores on the unpruned layer (equal keys: one scored option)."""
        if plan.weights is None:
            return ("none",)
        unit = weight_method(plan.method)
        key = unit.storage_key(
            plan.weights, out_channels=spec.out_channels, row_length=spec.row_length
        )
        return (plan.method, *key)

    def layer_errors(self, plan) -> dict[str, float]:
        """Each layer's share of the proxy (weights and activations; pruning not included)."""
        graph = self.space.graph
        errors = {}
        for name in graph.layers:
            layer_plan = plan.get(name)
            index = self._index[name].get(self._key(graph.layers[name], layer_plan))
            if index is None:
                raise ValueError(f"layer {name}: {layer_plan} is not among the scored options")
            weight_error = float(self.table.errors[name][index])
            errors[name] = weight_error + self.activation_error(name, layer_plan.act_bits)
        return errors

    def activation_error(self, name: str, bits: int) -> float:
        """The proxy's price of quantizing layer `name`'s input to `bits` (0 at 32)."""
        if bits == 32:
            return 0.0
        unit = activation_method_for(self.space.layers[name].act_method, bits)
        return unit.proxy_error(bits) * self.table.sensitivities.get(name, 1.0)

    def pruning_cost(self, gid: int, ratio: float) -> float:
        """The proxy's price of keeping `ratio` of group `gid`'s channels (0 at 1)."""
        return self._pruning.get(gid, {}).get(ratio, 0.0) if ratio < 1.0 else 0.0

    def value(self, plan) -> float:
        from search_spaces.plan import group_keeps

        total = sum(self.layer_errors(plan).values())
        for gid, ratio in group_keeps(plan, self.space.graph).items():
            total += self.pruning_cost(gid, ratio)
        return float(total)
