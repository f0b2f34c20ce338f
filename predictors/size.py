"""Exact size of a plan by the size convention of DESIGN.md ("And the Bit Goes Down" / PQF).

- Uncompressed baseline: every weight and bias at 32 bits; each BatchNorm as two 32-bit vectors
  (scale and shift) per channel; modules kept as is at 32 bits.
- A layer left as is: 32·N + bias; its BatchNorm 2·32 bits per kept channel.
- A VQ layer: codes (N/m)·log2(k_eff), codebook 16·k_eff·d̃, LR²VQ projection 16·d̃·m (absent when
  d̃ = m), bias 32·C_out.
- A b-bit layer: b·N + a 32-bit scale per output channel + bias.
N = C_out·C_in/groups·K² after pruning; k_eff = min(k, largest power of two ≤ C_out·(D/m)/4).

One implementation serves one plan and thousands: plans become arrays (`PlanBatch`, plans × layers)
and the convention is evaluated with numpy over the whole batch. `size_report` is the same code on a
batch of one, so the per-layer breakdown and the search's numbers cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search_spaces.graph import ModelGraph
from search_spaces.plan import Plan, group_keeps

__all__ = [
    "LayerSize",
    "PlanBatch",
    "SizePredictor",
    "SizeReport",
    "kept_channels_array",
    "layer_bits",
    "size_report",
]

MIB = 2**20


def kept_channels_array(channels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`search_spaces.knobs.kept_channels` over arrays (same rounding: halves round up)."""
    channels = np.asarray(channels, dtype=np.int64)
    keep = np.asarray(keep, dtype=np.float64)
    multiple_of_8 = np.clip(8 * np.floor(channels * keep / 8 + 0.5), 8, channels).astype(np.int64)
    single = np.clip(np.floor(channels * keep + 0.5), 1, channels).astype(np.int64)
    kept = np.where(channels >= 32, multiple_of_8, single)
    return np.where(keep >= 1.0, channels, kept)


def _floor_log2(values: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for positive integers below 2**53, exactly (frexp does not round)."""
    _, exponent = np.frexp(values.astype(np.float64))
    return (exponent - 1).astype(np.int64)


@dataclass(frozen=True)
class PlanBatch:
    """Plans as arrays: one row per plan, one column per layer of the graph (or group, for keep).

    Attributes:
        k: clusters, 0 where the layer is not vector-quantized.
        m: subvector length (1 where unused).
        d_tilde: clustering dimensionality (equal to m for plain PQ).
        weight_bits: weight bits, 32 for layers left as they are (and ignored where k > 0).
        keep: keep ratio per coupling group (plans × groups).
    """

    k: np.ndarray
    m: np.ndarray
    d_tilde: np.ndarray
    weight_bits: np.ndarray
    keep: np.ndarray

    def __len__(self) -> int:
        return self.k.shape[0]

    @classmethod
    def from_plans(cls, graph: ModelGraph, plans: Sequence[Plan]) -> PlanBatch:
        """Arrays for `plans`; layers a plan does not name are left as they are."""
        names = list(graph.layers)
        shape = (len(plans), len(names))
        k = np.zeros(shape, dtype=np.int64)
        m = np.ones(shape, dtype=np.int64)
        d = np.ones(shape, dtype=np.int64)
        bits = np.full(shape, 32, dtype=np.int64)
        keep = np.ones((len(plans), len(graph.groups)), dtype=np.float64)
        column = {name: j for j, name in enumerate(names)}
        for i, plan in enumerate(plans):
            for name, layer_plan in plan.layers.items():
                j = column[name]
                if layer_plan.k is not None:
                    k[i, j], m[i, j], d[i, j] = (
                        layer_plan.k,
                        layer_plan.m,
                        layer_plan.clustering_dim,
                    )
                elif layer_plan.weight_bits is not None:
                    bits[i, j] = layer_plan.weight_bits
            for gid, ratio in group_keeps(plan, graph).items():
                keep[i, gid] = ratio
        return cls(k=k, m=m, d_tilde=d, weight_bits=bits, keep=keep)


@dataclass(frozen=True)
class _LayerTable:
    """The graph's per-layer facts as arrays, built once per graph."""

    c_out: np.ndarray
    c_in: np.ndarray
    groups: np.ndarray
    kernel: np.ndarray
    has_bias: np.ndarray
    has_bn: np.ndarray
    depthwise: np.ndarray
    out_group: np.ndarray  # −1 where the layer is in no coupling group
    ties: np.ndarray  # groups × layers: input channels lost per channel pruned from the group
    group_channels: np.ndarray

    @classmethod
    def of(cls, graph: ModelGraph) -> _LayerTable:
        specs = list(graph.layers.values())
        ties = np.zeros((len(graph.groups), len(specs)), dtype=np.int64)
        for j, spec in enumerate(specs):
            for tie in spec.inputs:
                ties[tie.group, j] += tie.multiplicity

        def column(values: list) -> np.ndarray:
            return np.asarray(values, dtype=np.int64)

        return cls(
            c_out=column([s.out_channels for s in specs]),
            c_in=column([s.in_channels for s in specs]),
            groups=column([s.groups for s in specs]),
            kernel=column([s.kernel_elems for s in specs]),
            has_bias=column([s.has_bias for s in specs]),
            has_bn=column([s.batchnorm is not None for s in specs]),
            depthwise=np.asarray([s.is_depthwise for s in specs], dtype=bool),
            out_group=column([-1 if s.group is None else s.group for s in specs]),
            ties=ties,
            group_channels=column([g.channels for g in graph.groups]),
        )


def layer_bits(
    graph: ModelGraph, batch: PlanBatch, *, table: _LayerTable | None = None
) -> dict[str, np.ndarray]:
    """Every size component for every plan and layer, in bits (arrays of plans × layers).

    Keys: "total" and its parts "weights" (codes for VQ, packed weights otherwise), "codebook",
    "projection", "scales", "bias", "batchnorm"; and the pruned shapes "c_out", "c_in", "k_eff".
    `table` is the graph's facts as arrays; pass it when scoring many batches of one graph.
    """
    table = table or _LayerTable.of(graph)
    n_plans = len(batch)
    if table.c_out.size == 0:
        zero = np.zeros((n_plans, 0), dtype=np.int64)
        return dict.fromkeys(
            (
                "total",
                "weights",
                "codebook",
                "projection",
                "scales",
                "bias",
                "batchnorm",
                "c_out",
                "c_in",
                "k_eff",
            ),
            zero,
        )
    group_kept = kept_channels_array(table.group_channels[None, :], batch.keep)
    removed = table.group_channels[None, :] - group_kept
    in_group = table.out_group >= 0
    c_out = np.where(in_group, group_kept[:, np.maximum(table.out_group, 0)], table.c_out)
    c_in = table.c_in[None, :] - removed @ table.ties
    groups = np.where(table.depthwise, c_out, table.groups)
    row = (c_in // groups) * table.kernel
    n_weights = c_out * row

    vq = batch.k > 0
    m = batch.m
    subvectors = c_out * (row // m)
    cap_log2 = _floor_log2(np.maximum(subvectors // 4, 1))
    k_log2 = _floor_log2(np.maximum(batch.k, 1))
    k_eff_log2 = np.minimum(k_log2, cap_log2)
    k_eff = np.left_shift(1, k_eff_log2)
    codes = (n_weights // m) * k_eff_log2
    codebook = 16 * k_eff * batch.d_tilde
    projection = np.where(batch.d_tilde < m, 16 * batch.d_tilde * m, 0)

    low_bits = batch.weight_bits < 32
    packed = np.where(low_bits, batch.weight_bits * n_weights, 32 * n_weights)
    scales = np.where(low_bits & ~vq, 32 * c_out, 0)
    weights = np.where(vq, codes, packed)
    codebook = np.where(vq, codebook, 0)
    projection = np.where(vq, projection, 0)
    bias = 32 * c_out * table.has_bias
    batchnorm = 64 * c_out * table.has_bn
    total = weights + codebook + projection + scales + bias + batchnorm
    return {
        "total": total,
        "weights": weights,
        "codebook": codebook,
        "projection": projection,
        "scales": scales,
        "bias": bias,
        "batchnorm": batchnorm,
        "c_out": c_out,
        "c_in": c_in,
        "k_eff": np.where(vq, k_eff, 0),
    }


class SizePredictor:
    """Exact compressed size of plans for one model: nothing to fit, batched prediction.

    Example:
        >>> predictor = SizePredictor(graph)
        >>> predictor.predict(plans)  # bytes, one per plan
    """

    def __init__(self, graph: ModelGraph):
        self.graph = graph
        self.kept_bits = graph.kept_bits
        self._table = _LayerTable.of(graph)

    def fit(self, records: object = None) -> SizePredictor:
        """The size convention is exact; there is nothing to learn."""
        return self

    def predict_bits(self, plans: Sequence[Plan] | PlanBatch) -> np.ndarray:
        """Total bits for each plan (kept modules included)."""
        batch = plans if isinstance(plans, PlanBatch) else PlanBatch.from_plans(self.graph, plans)
        total = layer_bits(self.graph, batch, table=self._table)["total"]
        return total.sum(axis=1) + self.kept_bits

    def predict(self, plans: Sequence[Plan] | PlanBatch) -> np.ndarray:
        """Size in bytes for each plan (fractional bytes where the bits are not a multiple of 8)."""
        return self.predict_bits(plans) / 8.0


@dataclass(frozen=True)
class LayerSize:
    """One layer's share of a plan's size, in bits, with its shape after pruning."""

    name: str
    method: str
    bits: int
    baseline_bits: int
    weights: int
    codebook: int
    projection: int
    scales: int
    bias: int
    batchnorm: int
    out_channels: int
    in_channels: int
    k_eff: int

    @property
    def ratio(self) -> float:
        return self.baseline_bits / self.bits if self.bits else float("inf")


@dataclass(frozen=True)
class SizeReport:
    """A plan's exact size with its per-layer breakdown."""

    total_bits: int
    baseline_bits: int
    kept_bits: int
    layers: tuple[LayerSize, ...]

    @property
    def size_bytes(self) -> int:
        return -(-self.total_bits // 8)

    @property
    def baseline_bytes(self) -> int:
        return -(-self.baseline_bits // 8)

    @property
    def size_mib(self) -> float:
        return self.total_bits / 8 / MIB

    @property
    def compression_ratio(self) -> float:
        return self.baseline_bits / self.total_bits

    def to_dict(self) -> dict:
        return {
            "size_bytes": self.size_bytes,
            "size_mib": self.size_mib,
            "baseline_bytes": self.baseline_bytes,
            "baseline_mib": self.baseline_bits / 8 / MIB,
            "compression_ratio": self.compression_ratio,
            "kept_bytes": self.kept_bits // 8,
            "layers": [
                {
                    "name": layer.name,
                    "method": layer.method,
                    "bytes": layer.bits / 8,
                    "baseline_bytes": layer.baseline_bits / 8,
                    "ratio": layer.ratio,
                    "out_channels": layer.out_channels,
                    "in_channels": layer.in_channels,
                    "k_eff": layer.k_eff,
                    "bits": {
                        "weights": layer.weights,
                        "codebook": layer.codebook,
                        "projection": layer.projection,
                        "scales": layer.scales,
                        "bias": layer.bias,
                        "batchnorm": layer.batchnorm,
                    },
                }
                for layer in self.layers
            ],
        }


def size_report(plan: Plan, graph: ModelGraph) -> SizeReport:
    """The exact size of `plan` on the model of `graph`, layer by layer."""
    table = _LayerTable.of(graph)
    parts = layer_bits(graph, PlanBatch.from_plans(graph, [plan]), table=table)
    unchanged = layer_bits(graph, PlanBatch.from_plans(graph, [Plan({})]), table=table)["total"][0]
    layers = tuple(
        LayerSize(
            name=name,
            method=plan.get(name).method,
            bits=int(parts["total"][0, j]),
            baseline_bits=int(unchanged[j]),
            weights=int(parts["weights"][0, j]),
            codebook=int(parts["codebook"][0, j]),
            projection=int(parts["projection"][0, j]),
            scales=int(parts["scales"][0, j]),
            bias=int(parts["bias"][0, j]),
            batchnorm=int(parts["batchnorm"][0, j]),
            out_channels=int(parts["c_out"][0, j]),
            in_channels=int(parts["c_in"][0, j]),
            k_eff=int(parts["k_eff"][0, j]),
        )
        for j, name in enumerate(graph.layers)
    )
    kept_bits = graph.kept_bits
    return SizeReport(
        total_bits=sum(layer.bits for layer in layers) + kept_bits,
        baseline_bits=graph.baseline_bits,
        kept_bits=kept_bits,
        layers=layers,
    )
