"""Exact size of a plan by the size convention of DESIGN.md ("And the Bit Goes Down" / PQF).

- Uncompressed baseline: every weight and bias at 32 bits; each BatchNorm as two 32-bit vectors
  (scale and shift) per channel; modules kept as is at 32 bits.
- A layer left as is: 32·N + bias; its BatchNorm 2·32 bits per kept channel.
- A layer with a weight method: what the method's unit says its weight stores
  (`WeightMethod.bits`: VQ's codes, codebook and projection; b-bit's packed levels and scales),
  + bias + BatchNorm.
N = C_out·C_in/groups·K² after pruning. This module owns the pruning arithmetic and the parts
every layer has; each method owns its own formula.

One implementation serves one plan and thousands: plans become arrays (`PlanBatch`, plans × layers)
and the convention is evaluated with numpy over the whole batch. `size_report` is the same code on a
batch of one, so the per-layer breakdown and the search's numbers cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search_spaces.graph import ModelGraph
from search_spaces.methods import (
    WeightConfig,
    WeightMethod,
    WeightShapes,
    weight_method,
    weight_method_code,
    weight_methods,
)
from search_spaces.plan import Plan, group_keeps

__all__ = [
    "LayerSize",
    "PlanBatch",
    "SizePredictor",
    "SizeReport",
    "kept_channels_array",
    "layer_bits",
    "size_report",
    "weight_arrays",
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


def weight_arrays(rows: Sequence[Sequence[WeightConfig | None]]) -> dict[str, np.ndarray]:
    """Weight configs (rows × layers; None: dense) as the size predictor's columns.

    The one place where configs become arrays (plans, a layer's options, a study's frontier):
    "method" holds `weight_method_code` (0: dense) and "<method>.<column>" each method's
    `to_columns`, for the methods that occur (0 elsewhere).
    """
    cells = _Cells((len(rows), len(rows[0]) if rows else 0))
    for i, row in enumerate(rows):
        for j, config in enumerate(row):
            if config is not None:
                cells.add(i, j, config)
    return cells.arrays()


class _Cells:
    """Configs collected cell by cell, then written as `weight_arrays` columns. A search turns
    thousands of plans into arrays per second, so a cell costs one `to_columns` call and two
    appends (its method is looked up once per config type), and each column is written with
    one assignment."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        # config type → (method name, its to_columns, flat cell indices, their column values)
        self.by_type: dict[type, tuple[str, Callable, list[int], list[tuple[int, ...]]]] = {}

    def add(self, i: int, j: int, config: WeightConfig) -> None:
        kind = self.by_type.get(type(config))
        if kind is None:
            unit = weight_method(config.method)
            kind = self.by_type[type(config)] = (unit.name, unit.to_columns, [], [])
        kind[2].append(i * self.shape[1] + j)
        kind[3].append(kind[1](config))

    def arrays(self) -> dict[str, np.ndarray]:
        method = np.zeros(self.shape, dtype=np.int64)
        arrays: dict[str, np.ndarray] = {"method": method}
        for name, _, flat, values in self.by_type.values():
            unit = weight_method(name)
            method.reshape(-1)[flat] = weight_method_code(name)
            table = np.asarray(values, dtype=np.int64).reshape(len(flat), len(unit.columns))
            for c, column in enumerate(unit.columns):
                target = arrays.setdefault(f"{name}.{column}", np.zeros(self.shape, np.int64))
                target.reshape(-1)[flat] = table[:, c]
        return arrays


@dataclass(frozen=True, eq=False, init=False)
class PlanBatch:
    """Plans as arrays: one row per plan, one column per layer of the graph (or group, for keep).

    Build it from plans (`from_plans`), or from columns as `weight_arrays` gives them:
    `PlanBatch(**weight_arrays(rows), keep=keep)`.

    Attributes:
        method: `weight_method_code` per plan and layer (0: the weight stays dense).
        columns: "<method>.<column>" → plans × layers, each method's `to_columns`.
        keep: keep ratio per coupling group (plans × groups).
    """

    method: np.ndarray
    columns: Mapping[str, np.ndarray]
    keep: np.ndarray

    def __init__(self, *, method: np.ndarray, keep: np.ndarray, **columns: np.ndarray):
        object.__setattr__(self, "method", np.asarray(method, dtype=np.int64))
        object.__setattr__(self, "columns", dict(columns))
        object.__setattr__(self, "keep", np.asarray(keep, dtype=np.float64))

    def __len__(self) -> int:
        return self.method.shape[0]

    def by_method(self) -> Iterator[tuple[WeightMethod, np.ndarray, dict[str, np.ndarray]]]:
        """(unit, mask, the unit's columns at the mask) for each weight method the batch uses."""
        for unit in weight_methods():
            mask = self.method == weight_method_code(unit.name)
            if mask.any():
                yield unit, mask, {c: self.columns[f"{unit.name}.{c}"][mask] for c in unit.columns}

    @classmethod
    def from_plans(cls, graph: ModelGraph, plans: Sequence[Plan]) -> PlanBatch:
        """Arrays for `plans`; layers a plan does not name are left as they are."""
        column = {name: j for j, name in enumerate(graph.layers)}
        keep = np.ones((len(plans), len(graph.groups)), dtype=np.float64)
        cells = _Cells((len(plans), len(column)))
        for i, plan in enumerate(plans):
            for name, layer_plan in plan.layers.items():
                if layer_plan.weights is not None:
                    cells.add(i, column[name], layer_plan.weights)
            for gid, ratio in group_keeps(plan, graph).items():
                keep[i, gid] = ratio
        return cls(**cells.arrays(), keep=keep)


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
    graph: ModelGraph,
    batch: PlanBatch,
    *,
    table: _LayerTable | None = None,
    parts: bool = True,
) -> dict[str, np.ndarray]:
    """Every size component for every plan and layer, in bits (arrays of plans × layers).

    Keys: "total" and its parts "weights" (everything the weight stores: 32·N when dense, else
    the method's parts summed), "bias", "batchnorm"; the pruned shapes "c_out", "c_in" and
    "row_length" (D); and each occurring method's own parts (`WeightMethod.bits`: "codes",
    "codebook", ...) and facts (`WeightMethod.facts`: "k_eff"), zero where a layer takes another
    method.
    `table` is the graph's facts as arrays; pass it when scoring many batches of one graph.
    `parts=False` leaves the methods' parts and facts out (the search only needs "total").
    """
    table = table or _LayerTable.of(graph)
    group_kept = kept_channels_array(table.group_channels[None, :], batch.keep)
    removed = table.group_channels[None, :] - group_kept
    in_group = table.out_group >= 0
    if table.group_channels.size:
        c_out = np.where(in_group, group_kept[:, np.maximum(table.out_group, 0)], table.c_out)
    else:  # no coupling group (a failed trace, or nothing prunable): no layer changes shape
        c_out = np.broadcast_to(table.c_out, (len(batch), table.c_out.size))
    c_in = table.c_in[None, :] - removed @ table.ties
    groups = np.where(table.depthwise, c_out, table.groups)
    row = (c_in // groups) * table.kernel
    weights = 32 * c_out * row
    extra: dict[str, np.ndarray] = {}
    for unit, mask, columns in batch.by_method():
        shapes = WeightShapes(out_channels=c_out[mask], row_length=row[mask])
        own = unit.bits(columns, shapes)
        weights[mask] = sum(own.values())
        if parts:
            for key, values in (own | unit.facts(columns, shapes)).items():
                extra.setdefault(key, np.zeros(weights.shape, dtype=np.int64))[mask] = values
    bias = 32 * c_out * table.has_bias
    batchnorm = 64 * c_out * table.has_bn
    return {
        "total": weights + bias + batchnorm,
        "weights": weights,
        "bias": bias,
        "batchnorm": batchnorm,
        "c_out": c_out,
        "c_in": c_in,
        "row_length": row,
        **extra,
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

    def predict_bits(self, plans: Sequence[Plan] | PlanBatch) -> np.ndarray:
        """Total bits for each plan (kept modules included)."""
        batch = plans if isinstance(plans, PlanBatch) else PlanBatch.from_plans(self.graph, plans)
        total = layer_bits(self.graph, batch, table=self._table, parts=False)["total"]
        return total.sum(axis=1) + self.kept_bits

    def predict(self, plans: Sequence[Plan] | PlanBatch) -> np.ndarray:
        """Size in bytes for each plan (fractional bytes where the bits are not a multiple of 8)."""
        return self.predict_bits(plans) / 8.0


@dataclass(frozen=True)
class LayerSize:
    """One layer's share of a plan's size, in bits, with its shape after pruning.

    Attributes:
        weights: everything the weight stores (32·N when dense), the sum of `parts` otherwise.
        parts: the weight method's parts in bits ("codes", "codebook", "projection" for VQ).
        facts: other integers the method reports ("k_eff" for VQ).
    """

    name: str
    method: str
    bits: int
    baseline_bits: int
    weights: int
    bias: int
    batchnorm: int
    out_channels: int
    in_channels: int
    parts: Mapping[str, int]
    facts: Mapping[str, int]

    @property
    def ratio(self) -> float:
        return self.baseline_bits / self.bits if self.bits else float("inf")

    @property
    def k_eff(self) -> int:
        """VQ's clusters used (0 for other methods): the size table's column."""
        return self.facts.get("k_eff", 0)


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
                    **layer.facts,
                    # Parts that add up to "bytes" × 8: the method's own parts, or the dense
                    # weights when the layer has no method.
                    "bits": {
                        **(layer.parts or {"weights": layer.weights}),
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
    batch = PlanBatch.from_plans(graph, [plan])
    parts = layer_bits(graph, batch, table=table)
    unchanged = layer_bits(graph, PlanBatch.from_plans(graph, [Plan({})]), table=table)["total"][0]
    # Each method's parts and facts by its own names, for its layers at once: the same arrays
    # the batch's total is made of.
    own: dict[int, dict[str, int]] = {}
    facts: dict[int, dict[str, int]] = {}
    for unit, mask, columns in batch.by_method():
        shapes = WeightShapes(
            out_channels=parts["c_out"][mask], row_length=parts["row_length"][mask]
        )
        bits, known = unit.bits(columns, shapes), unit.facts(columns, shapes)
        for at, j in enumerate(np.flatnonzero(mask[0])):
            own[j] = {k: int(v[at]) for k, v in bits.items()}
            facts[j] = {k: int(v[at]) for k, v in known.items()}
    layers = []
    for j, name in enumerate(graph.layers):
        layers.append(
            LayerSize(
                name=name,
                method=plan.get(name).method,
                bits=int(parts["total"][0, j]),
                baseline_bits=int(unchanged[j]),
                weights=int(parts["weights"][0, j]),
                bias=int(parts["bias"][0, j]),
                batchnorm=int(parts["batchnorm"][0, j]),
                out_channels=int(parts["c_out"][0, j]),
                in_channels=int(parts["c_in"][0, j]),
                parts=own.get(j, {}),
                facts=facts.get(j, {}),
            )
        )
    kept_bits = graph.kept_bits
    return SizeReport(
        total_bits=sum(layer.bits for layer in layers) + kept_bits,
        baseline_bits=graph.baseline_bits,
        kept_bits=kept_bits,
        layers=tuple(layers),
    )
