"""The proxy objective: each option's predicted distortion of the model's output, per layer.

The proxy is separable: a plan's distortion is the sum over layers of
`sensitivity_l · relative_weight_error_l(option)`, where
- `relative_weight_error` is ‖Ŵ − W‖² / ‖W‖² for the option's reconstruction Ŵ;
- `sensitivity_l` is how much the model's output moves per unit of relative weight error in
  layer l: the relative squared change of the outputs on calibration inputs when W gets Gaussian
  noise of a small relative energy, divided by that energy (a first-order, HAWQ-like measure that
  needs one forward pass per layer). Without sensitivities every layer counts as 1.

Weight errors:
- b-bit weights: the engine's own `WeightQuantizer` (its initial clip search), exactly.
- LR²VQ with (k, m, d̃): estimated, not clustered, so that a ResNet-50 space (tens of thousands of
  options) is scored in seconds. The subvectors X (the engine's `subvectors`) are projected on
  their top d̃ right singular vectors; the low-rank error is the energy of the other m − d̃
  (exact, LR²VQ's SVD initialisation). The clustering error of k centroids in the d̃-dimensional
  latent space is Zador's high-resolution estimate, d̃ · G(d̃) · 2π((d̃+2)/d̃)^((d̃+2)/2) ·
  (∏λ_i)^(1/d̃) · k^(−2/d̃) per subvector (λ the latents' covariance eigenvalues, G the normalized
  second moment of the best d̃-dimensional quantizer cell), capped at the latents' variance (what
  one centroid leaves), plus the latents' squared mean, which the estimate's centroids absorb.
  This is LR²VQ's trade-off per layer: a smaller d̃ loses low-rank energy but clusters better.
  `vq_error_check` compares the estimate with real k-means on sampled options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from engine.quantizers import WeightQuantizer
from engine.vq import subvectors
from planner.options import LayerOptions

__all__ = ["ProxyTable", "layer_sensitivities", "proxy_table", "vq_error_estimate"]

# Relative energy of the probe noise in the sensitivity measurement: small enough to stay in the
# linear regime, large enough to stay above float rounding.
_PROBE_ENERGY = 1e-3


def _cell_moment(d: int) -> float:
    """G(d): 1/12 in one dimension, falling toward 1/(2πe) (an interpolation in 1/√d)."""
    limit = 1 / (2 * math.pi * math.e)
    return limit + (1 / 12 - limit) / math.sqrt(d)


class _Spectrum:
    """One layer's subvectors at one m, with what the VQ estimate needs per d̃ (cached).

    Everything comes from the m×m second-moment matrix of the subvectors and their mean, so a
    layer costs one pass over its weights per m.
    """

    def __init__(self, weight: Tensor, m: int):
        x = subvectors(weight.detach().to(torch.float64).cpu(), m)
        self.count = x.shape[0]
        second = (x.T @ x).numpy()
        mean = x.mean(dim=0).numpy()
        eigen, vectors = np.linalg.eigh(second)  # ascending
        order = np.argsort(eigen)[::-1]
        self.singular_sq = np.maximum(eigen[order], 0.0)  # squared singular values of X
        self.basis = vectors[:, order].T  # right singular vectors, as rows
        self.covariance = second / self.count - np.outer(mean, mean)
        self._latent_stats: dict[int, tuple[float, float, float]] = {}

    def latent_stats(self, d: int) -> tuple[float, float, float]:
        """(low-rank error, log geometric mean of the latents' variances, their total variance)
        for clustering dimension d: the latents are X projected on the top d singular vectors."""
        if d not in self._latent_stats:
            top = self.basis[:d]
            covariance = top @ self.covariance @ top.T
            eigen = np.maximum(np.linalg.eigvalsh(covariance), 1e-30)
            self._latent_stats[d] = (
                float(self.singular_sq[d:].sum()),
                float(np.log(eigen).mean()),
                float(eigen.sum()),
            )
        return self._latent_stats[d]


def vq_error_estimate(spectrum: _Spectrum, k: int, d: int) -> float:
    """Estimated ‖Ŵ − W‖² of LR²VQ with k centroids of dimension d (see the module doc)."""
    low_rank, log_geomean, variance = spectrum.latent_stats(d)
    zador = (
        d
        * _cell_moment(d)
        * 2
        * math.pi
        * ((d + 2) / d) ** ((d + 2) / 2)
        * math.exp(log_geomean - 2 * math.log(k) / d)
    )
    return low_rank + spectrum.count * min(zador, variance)


def layer_sensitivities(
    model: nn.Module, inputs: Sequence[Tensor], layers: Sequence[str], *, seed: int = 0
) -> dict[str, float]:
    """Relative squared output change per unit of relative weight error, per layer.

    `inputs` are calibration batches (each a tensor, or a tuple for models with several inputs).
    The model is not changed (each layer's weight is restored after its probe).
    """
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()

    def outputs() -> list[Tensor]:
        with torch.no_grad():
            return [model(*batch) if isinstance(batch, tuple) else model(batch) for batch in inputs]

    reference = outputs()
    scale = sum(float(r.double().square().sum()) for r in reference)
    result = {}
    for name in layers:
        weight = model.get_submodule(name).weight
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
) -> ProxyTable:
    """Score every option of every layer (weights as they are in `model`, unpruned)."""
    relative: dict[str, np.ndarray] = {}
    for name, layer_options in options.items():
        weight = model.get_submodule(name).weight.detach().float().cpu()
        energy = float(weight.double().square().sum()) or 1.0
        spectra: dict[int, _Spectrum] = {}
        quantized: dict[int, float] = {}
        errors = np.zeros(len(layer_options))
        for i, option in enumerate(layer_options.plans):
            if option.k is not None:
                if option.m not in spectra:
                    spectra[option.m] = _Spectrum(weight, option.m)
                spectrum = spectra[option.m]
                errors[i] = vq_error_estimate(spectrum, option.k, option.clustering_dim) / energy
            elif option.weight_bits is not None:
                bits = option.weight_bits
                if bits not in quantized:
                    with torch.no_grad():
                        approx = WeightQuantizer(weight, bits)(weight)
                    quantized[bits] = float((approx - weight).double().square().sum()) / energy
                errors[i] = quantized[bits]
        relative[name] = errors
    weights = {name: float((sensitivities or {}).get(name, 1.0)) for name in options}
    return ProxyTable(
        errors={name: weights[name] * e for name, e in relative.items()},
        relative_errors=relative,
        sensitivities=weights,
    )


# Relative squared error of a b-bit uniform quantizer on Gaussian data with its best clipping
# (Lloyd–Max–style tables for the uniform case): the proxy's price of quantizing a layer's input.
_ACTIVATION_ERROR = {2: 0.1188, 3: 0.03744, 4: 0.01154, 8: 0.0001}


class ProxyObjective:
    """The proxy of any plan of a space: weight compression, pruning and activation bits.

    `value(plan)` = Σ_layers s_l · (weight error of its option + activation error of its bits)
    + Σ_groups Σ_producers s_l · (share of the producer's weight energy in the pruned channels).
    - Weight errors come from the `ProxyTable` of the options at keep = 1 (a pruned layer's
      remaining weights are priced as if unpruned: the table is not rebuilt per keep ratio).
    - Pruning removes the channels the engine removes (lowest `channel_importance` first).
    - Activation errors are those of a Gaussian input (`_ACTIVATION_ERROR`).
    Lower is better; 0 is the uncompressed model.
    """

    def __init__(self, model: nn.Module, space, table: ProxyTable, options):
        from engine.pruning import channel_importance
        from search_spaces.knobs import effective_k, kept_channels

        self.space = space
        self.table = table
        graph = space.graph
        self._effective_k = effective_k
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
                    weight = model.get_submodule(name).weight.detach().double()
                    rows = weight.reshape(weight.shape[0], -1)
                    share = float(rows[removed].square().sum() / rows.square().sum().clamp(1e-30))
                    cost += table.sensitivities.get(name, 1.0) * share
                costs[ratio] = cost
            self._pruning[gid] = costs

    def _key(self, spec, plan) -> tuple:
        if plan.k is not None:
            k = self._effective_k(plan.k, spec.out_channels, spec.row_length, plan.m)
            return ("vq", k, plan.m, plan.clustering_dim)
        return (plan.method, plan.weight_bits)

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
        return _ACTIVATION_ERROR.get(bits, 0.0) * self.table.sensitivities.get(name, 1.0)

    def value(self, plan) -> float:
        from search_spaces.plan import group_keeps

        total = sum(self.layer_errors(plan).values())
        for gid, ratio in group_keeps(plan, self.space.graph).items():
            if ratio < 1.0:
                total += self._pruning.get(gid, {}).get(ratio, 0.0)
        return float(total)
