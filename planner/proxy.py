"""The proxy objective: each option's predicted distortion of the model's output, per layer.

The proxy is separable: a plan's distortion is the sum over layers of `response_l(e_l)`, where
- `e_l` is the option's relative weight error ‖Ŵ − W‖² / ‖W‖², as the option's weight method
  computes it (`WeightMethod.proxy_errors`: exact for b-bit weights, an estimate from the
  subvectors' spectrum for LR²VQ, see `search_spaces.methods.vq`);
- `response_l` is how far the model's output moves at that error in layer l, measured on
  calibration inputs at a few of the layer's real options, with BatchNorm re-estimated as `apply`
  does, in the distortion the output calls for (KL for logits): `planner.response`,
  `measured_proxy_table`. Without calibration inputs every layer's response is its error.
Activation quantizers and pruning are priced through the same responses: the unit's error on a
Gaussian input (`ActivationMethod.proxy_error`), the share of the weight energy pruned away.

`layer_sensitivities` and `proxy_table(sensitivities=...)` are the proxy as it was before the
responses were measured (a linear sensitivity to small Gaussian weight noise), kept for the
comparison in `scripts/bench_proxy.py`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.distill import output_of
from planner.options import LayerOptions
from planner.response import (
    LayerResponse,
    ResponseMeter,
    gaussian_noise,
    noise_levels,
    pick_probes,
)
from search_spaces.attention import layer_weight
from search_spaces.methods import activation_method_for, weight_method
from search_spaces.methods.threads import one_thread

__all__ = [
    "ProxyObjective",
    "ProxyTable",
    "layer_sensitivities",
    "measured_proxy_table",
    "proxy_table",
]

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
            return [
                output_of(model(*batch) if isinstance(batch, tuple) else model(batch))
                for batch in inputs
            ]

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
    """Each option's proxy distortion, per layer: `errors[name][i]` is option i's.

    Attributes:
        errors: layer → array over that layer's options (same order as its `LayerOptions`).
        relative_errors: each option's relative weight error, before its layer's response.
        responses: layer → its response (distortion at a relative error); a layer without one
            is priced at its error.
        facts: how the responses were measured (`planner.response.ResponseMeter.facts`), for
            reports; empty for a table without measured responses.
    """

    errors: Mapping[str, np.ndarray]
    relative_errors: Mapping[str, np.ndarray]
    responses: Mapping[str, LayerResponse]
    facts: Mapping[str, Any] = field(default_factory=dict)

    def value(self, chosen: Mapping[str, int]) -> float:
        """The proxy of a plan given as layer → option index."""
        return float(sum(self.errors[name][i] for name, i in chosen.items()))

    def price(self, name: str, relative_error: float) -> float:
        """Layer `name`'s distortion at `relative_error` (activations, pruning)."""
        response = self.responses.get(name)
        return float(response(relative_error)) if response is not None else float(relative_error)


def proxy_table(
    model: nn.Module,
    options: Mapping[str, LayerOptions],
    *,
    sensitivities: Mapping[str, float] | None = None,
    progress: bool = False,
) -> ProxyTable:
    """The proxy with linear responses: `sensitivities[name]` per unit of relative error (1.0
    where none is given). Weights as they are in `model`, unpruned. `progress`: a bar over the
    layers on stderr."""
    with one_thread():  # small operations by the thousand: see search_spaces.methods.threads
        relative = _relative_errors(model, options, progress)
    responses = {
        name: LayerResponse.linear((sensitivities or {}).get(name, 1.0)) for name in options
    }
    return _table(relative, responses, {})


def measured_proxy_table(
    model: nn.Module,
    options: Mapping[str, LayerOptions],
    calibration: Sequence,
    *,
    distortion: str,
    priced: Iterable[str] = (),
    reestimate_batchnorm: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> ProxyTable:
    """The proxy with each layer's response measured on `calibration` (see the module
    docstring and `planner.response`).

    Args:
        model: the original model (not changed).
        options: every layer's options.
        calibration: input batches (tensors, or tuples for several inputs).
        distortion: "kl", "cosine" or "mse" (`planner.response.OutputDistortion`).
        priced: layers to measure even where no weight option has an error (their activation
            bits or their group's pruning are priced).
        reestimate_batchnorm: re-estimate BatchNorm for each probe, as `apply` does.
        seed: the Gaussian probes' seed.
        progress: a bar over the layers on stderr.
    """
    meter = ResponseMeter(
        model, calibration, kind=distortion, reestimate_batchnorm=reestimate_batchnorm
    )
    priced = set(priced)
    relative: dict[str, np.ndarray] = {}
    responses: dict[str, LayerResponse] = {}
    items = list(options.items())
    for index, (name, layer_options) in enumerate(_bar(items, "proxy table", progress)):
        weight = layer_weight(model, name)
        source = weight.detach().float().cpu()
        with one_thread():  # small operations by the thousand: see search_spaces.methods.threads
            errors, reconstructions = _errors_and_reconstructions(source, layer_options)
        relative[name] = errors
        if (errors > 0).any() or name in priced:
            probes = _probes(source, errors, reconstructions, seed + index)
            responses[name] = meter.measure(weight, probes)
    return _table(relative, responses, meter.facts)


def _errors_and_reconstructions(
    weight: Tensor, layer_options: LayerOptions
) -> tuple[np.ndarray, dict[int, Tensor]]:
    """Each option's relative weight error, and the reconstructions of the options whose
    method has a cheap one (`WeightMethod.probe_weight`: their error is computed from it, so
    the probe reuses it)."""
    errors = np.zeros(len(layer_options))  # a dense weight loses nothing
    reconstructions: dict[int, Tensor] = {}
    energy = float(weight.double().square().sum()) or 1.0
    by_method: dict[str, list[int]] = {}
    for i, option in enumerate(layer_options.plans):
        if option.weights is not None:
            by_method.setdefault(option.method, []).append(i)
    for method, indices in by_method.items():
        unit = weight_method(method)
        if not _probes_cheaply(method):
            configs = [layer_options.plans[i].weights for i in indices]
            errors[indices] = unit.proxy_errors(weight, configs)
            continue
        for i in indices:
            reconstruction = unit.probe_weight(weight, layer_options.plans[i].weights)
            reconstructions[i] = reconstruction
            errors[i] = float((reconstruction - weight).double().square().sum()) / energy
    return errors, reconstructions


def _probes(
    weight: Tensor, errors: np.ndarray, reconstructions: Mapping[int, Tensor], seed: int
) -> list[tuple[float, Tensor]]:
    """(relative error, reconstruction) of each probe of one layer: its real options where its
    methods reconstruct cheaply, Gaussian noise at its options' error energies otherwise."""
    probeable = np.array([i in reconstructions for i in range(len(errors))])
    chosen = pick_probes(errors, probeable)
    if chosen:
        return [(float(errors[i]), reconstructions[i]) for i in chosen]
    return [(level, gaussian_noise(weight, level, seed)) for level in noise_levels(errors)]


def _probes_cheaply(method: str) -> bool:
    """Whether the method reconstructs a weight for a probe (overrides `probe_weight`)."""
    from search_spaces.methods._base import WeightMethod

    return type(weight_method(method)).probe_weight is not WeightMethod.probe_weight


def _table(relative, responses, facts) -> ProxyTable:
    errors = {
        name: responses[name](e) if name in responses else e.copy() for name, e in relative.items()
    }
    return ProxyTable(errors=errors, relative_errors=relative, responses=responses, facts=facts)


def _relative_errors(
    model: nn.Module, options: Mapping[str, LayerOptions], progress: bool
) -> dict[str, np.ndarray]:
    relative: dict[str, np.ndarray] = {}
    for name, layer_options in _bar(options.items(), "proxy table", progress, len(options)):
        weight = layer_weight(model, name).detach().float().cpu()
        relative[name] = _errors_and_reconstructions(weight, layer_options)[0]
    return relative


class ProxyObjective:
    """The proxy of any plan of a space: weight compression, pruning and activation bits.

    `value(plan)` = Σ_layers response_l(weight error of its option) + response_l(activation
    error of its bits) + Σ_groups Σ_producers response_l(share of the producer's weight energy
    in the pruned channels).
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
                    cost += table.price(name, share)
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
        return self.table.price(name, unit.proxy_error(bits))

    def pruning_cost(self, gid: int, ratio: float) -> float:
        """The proxy's price of keeping `ratio` of group `gid`'s channels (0 at 1)."""
        return self._pruning.get(gid, {}).get(ratio, 0.0) if ratio < 1.0 else 0.0

    def value(self, plan) -> float:
        from search_spaces.plan import group_keeps

        total = sum(self.layer_errors(plan).values())
        for gid, ratio in group_keeps(plan, self.space.graph).items():
            total += self.pruning_cost(gid, ratio)
        return float(total)
