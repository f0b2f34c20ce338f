"""Layer configurations and the features a latency model reads from them.

Every latency predictor here works on the same unit: one layer as it runs in the deployed form
(channels after pruning, an activation quantizer in front where the plan asks for one). A layer
configuration is a handful of integers — `LayerConfigs`, one array per column — and a plan is the
configurations of its layers. Plans of one model share most configurations (a layer takes only a
few distinct pruned shapes), so predictors score each distinct configuration once
(`LayerConfigs.unique`) and sum per plan, which is what makes thousands of plans a second cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from predictors.size import PlanBatch, layer_bits
from search_spaces.graph import LayerSpec, ModelGraph
from search_spaces.macs import layer_macs
from search_spaces.plan import Plan

__all__ = [
    "ALONE",
    "BASE_COLUMNS",
    "FEATURE_NAMES",
    "KINDS",
    "RUNTIME_FEATURE_NAMES",
    "LatencyBatch",
    "LayerConfigs",
    "features",
    "plan_layer_configs",
]

KINDS = ("conv2d", "conv1d", "linear")

FEATURE_NAMES = (
    "is_conv2d",
    "is_conv1d",
    "is_linear",
    "depthwise",
    "log2_c_in",
    "log2_c_out",
    "log2_kernel",
    "log2_in_spatial",
    "log2_out_spatial",
    "log2_batch",
    "log2_macs",
    "log2_in_elems",
    "log2_out_elems",
    "log2_weight_elems",
    "log2_groups",
    "act_quantized",
    "act_bits",
    "weight_bits",
)

# What a runtime with int8 kernels (ONNX Runtime) charges beyond a layer's own shape: its kernel
# class beside its neighbours' (`LayerConfigs.in_int8` ...), since a boundary between classes
# costs a Quantize or Dequantize and layout changes, and the work of a lookup quantizer below 8
# bits (N2UQ compares each input element with its 2^b - 1 thresholds). A predictor of such a
# runtime reads these too (`features(configs, names)`); one of PyTorch eager does not.
RUNTIME_FEATURE_NAMES = (
    "int8",
    "in_int8",
    "out_int8",
    "in_boundary",
    "out_boundary",
    "join_before",
    "join_after",
    "pooled_before",
    "log2_lookup_work",
)

# The neighbour columns of a layer timed alone: model input before it, model output after it.
ALONE = {"in_int8": 0, "out_int8": 0, "joins_in": 1, "joins_out": 1, "pooled": 0}


@dataclass(frozen=True)
class LayerConfigs:
    """Deployed layer configurations, one array per column, all of one shape.

    Attributes:
        kind: index into `KINDS`.
        c_in, c_out: channels after pruning (features for Linear).
        groups: conv groups after pruning (a depthwise conv has c_out groups).
        kernel: kernel elements (K² for a 2-d conv, 1 for Linear).
        stride: spatial stride (1 for Linear).
        in_spatial, out_spatial: elements per channel of the input and the output (H·W for a
            2-d conv; tokens for a Linear over sequences, else 1).
        batch: the batch size.
        act_bits: input activation bits (32: not quantized).
        weight_bits: weight bits the deployed form runs at, as the weight method says
            (`WeightMethod.deployed_weight_bits`: 32 for dense and for VQ, which runs decoded).
        in_int8, out_int8: how many of the layers writing its input / reading its output run
            int8 kernels (8-bit activations): 0 none (or the model's input / output), 1 some,
            2 all.
        joins_in, joins_out: layers writing its input's channels / its output's channels (more
            than 1: a residual Add joins them).
        pooled: 1 when its input has fewer elements per channel than a writer's output (a
            pooling or strided view between them).
    Layers timed alone (`ALONE`) have fp32 neighbours and no join or pooling.
    """

    kind: np.ndarray
    c_in: np.ndarray
    c_out: np.ndarray
    groups: np.ndarray
    kernel: np.ndarray
    stride: np.ndarray
    in_spatial: np.ndarray
    out_spatial: np.ndarray
    batch: np.ndarray
    act_bits: np.ndarray
    weight_bits: np.ndarray
    in_int8: np.ndarray
    out_int8: np.ndarray
    joins_in: np.ndarray
    joins_out: np.ndarray
    pooled: np.ndarray

    @classmethod
    def from_columns(cls, **columns) -> LayerConfigs:
        """Arrays (or scalars, broadcast) for every column, as int64; neighbour columns left
        out take a layer alone's values (`ALONE`)."""
        columns = {**ALONE, **columns}
        arrays = np.broadcast_arrays(*(np.asarray(columns[f.name]) for f in fields(cls)))
        return cls(**{f.name: a.astype(np.int64) for f, a in zip(fields(cls), arrays, strict=True)})

    @property
    def shape(self) -> tuple[int, ...]:
        return self.kind.shape

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def reshape(self, *shape: int) -> LayerConfigs:
        return LayerConfigs(**{k: v.reshape(*shape) for k, v in self.columns().items()})

    def take(self, index: np.ndarray) -> LayerConfigs:
        return LayerConfigs(**{k: v[index] for k, v in self.columns().items()})

    @property
    def macs(self) -> np.ndarray:
        """Multiply-accumulates of the whole batch."""
        return layer_macs(
            c_out=self.c_out,
            c_in=self.c_in,
            groups=self.groups,
            kernel=self.kernel,
            out_spatial=self.out_spatial,
            batch=self.batch,
        )

    def alone(self) -> LayerConfigs:
        """These configurations as single layers timed alone (`ALONE`'s neighbours)."""
        return replace(
            self, **{k: np.full(self.shape, v, dtype=np.int64) for k, v in ALONE.items()}
        )

    def contiguous(self) -> LayerConfigs:
        """These configurations with every layer's neighbours in its own kernel class: what a
        layer costs inside a region of its class, with no boundary. A prediction over them is
        a sum of per-layer terms again (the exact solver's additive part)."""
        own = np.where(self.act_bits == 8, 2, 0)
        return replace(self, in_int8=own, out_int8=own)

    def unique(self) -> tuple[LayerConfigs, np.ndarray]:
        """(the distinct configurations, flat; the index of each element among them).

        `unique.take(inverse).reshape(*self.shape)` gives back `self`.
        """
        columns = self.columns()
        flat = np.stack([v.reshape(-1) for v in columns.values()], axis=1)
        key_columns = list(columns.values())
        if self.kind.ndim == 2 and self.kind.shape[0] > 0:
            # Plans × layers: a layer's static columns are one "layer index" column, so the
            # key stays small enough for one int64.
            varying = [v for v in key_columns if not (v == v[:1]).all()]
            layer = np.broadcast_to(np.arange(self.kind.shape[1]), self.kind.shape)
            key_columns = [layer, *varying]
        key = np.zeros(flat.shape[0], dtype=np.int64)
        radix_total = 1
        for column in key_columns:
            column = column.reshape(-1)
            low = int(column.min()) if column.size else 0
            base = int(column.max()) - low + 1 if column.size else 1
            radix_total *= base
            key = key * base + (column - low)
        if radix_total >= 2**62:  # would overflow: rows compared column by column instead
            stacked = np.stack([c.reshape(-1) for c in key_columns], axis=1)
            _, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        else:
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        rows = flat[first]
        unique = LayerConfigs.from_columns(**dict(zip(columns, rows.T, strict=True)))
        return unique, inverse.reshape(-1)


# The columns of a layer's own configuration, without its neighbours (a lookup table's key).
BASE_COLUMNS = tuple(f for f in LayerConfigs.__dataclass_fields__ if f not in ALONE)


def features(configs: LayerConfigs, names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """The network's input per configuration: float32, shape (*configs.shape, len(names)), of
    `FEATURE_NAMES` and, for a runtime with int8 kernels, `RUNTIME_FEATURE_NAMES`.

    Counts enter as log2, so that one network spans a 1×1 conv on 7×7 and a 3×3 conv on 224×224.
    """
    c = configs
    log2 = np.log2
    columns = [
        c.kind == 0,
        c.kind == 1,
        c.kind == 2,
        (c.groups > 1) & (c.groups == c.c_in) & (c.groups == c.c_out),
        log2(c.c_in),
        log2(c.c_out),
        log2(c.kernel),
        log2(c.in_spatial),
        log2(c.out_spatial),
        log2(c.batch),
        log2(np.maximum(c.macs, 1)),
        log2(c.batch * c.c_in * c.in_spatial),
        log2(c.batch * c.c_out * c.out_spatial),
        log2(c.c_out * (c.c_in // c.groups) * c.kernel),
        log2(c.groups),
        c.act_bits < 32,
        c.act_bits / 32,
        c.weight_bits / 32,
    ]
    if any(name in RUNTIME_FEATURE_NAMES for name in names):
        int8 = c.act_bits == 8
        columns += [
            int8,
            c.in_int8 / 2,
            c.out_int8 / 2,
            int8 != (c.in_int8 == 2),
            int8 != (c.out_int8 == 2),
            c.joins_in > 1,
            c.joins_out > 1,
            c.pooled > 0,
            np.where(
                c.act_bits < 8,
                log2(c.batch * c.c_in * c.in_spatial) + log2(2.0 ** np.minimum(c.act_bits, 7) - 1),
                0.0,
            ),
        ]
    by_name = dict(zip(FEATURE_NAMES + RUNTIME_FEATURE_NAMES, columns, strict=False))
    try:
        picked = [by_name[name] for name in names]
    except KeyError as error:
        raise ValueError(f"unknown latency feature {error}") from None
    return np.stack(picked, axis=-1).astype(np.float32)


def _spatial(shape: tuple[int, ...], kind: str) -> int:
    """Elements per channel: H·W (or L) for a conv, tokens for a Linear."""
    return math.prod(shape[2:]) if kind != "linear" else math.prod(shape[1:-1])


def _static_columns(spec: LayerSpec) -> dict[str, int]:
    """A layer's columns that no plan changes. An embedding enters as the Linear of one input
    feature that writes its rows out (one copy per element, like its MACs): the latency
    predictors know no lookup of their own, and a gather costs what it moves."""
    kind = "linear" if spec.kind == "embedding" else spec.kind
    in_spatial = _spatial(spec.input_shape, kind)
    out_spatial = _spatial(spec.output_shape, kind)
    if spec.kind == "embedding":
        in_spatial = out_spatial = max(1, math.prod(spec.input_shape[1:]))  # the token ids
    stride = 1
    if kind != "linear" and len(spec.input_shape) > 2:
        stride = max(1, round(spec.input_shape[-1] / max(spec.output_shape[-1], 1)))
    return {
        "kind": KINDS.index(kind),
        "kernel": spec.kernel_elems,
        "stride": stride,
        "in_spatial": max(in_spatial, 1),
        "out_spatial": max(out_spatial, 1),
        "batch": spec.input_shape[0],
    }


@dataclass(frozen=True)
class LatencyBatch:
    """Plans of one model as arrays, with what latency needs beyond size: activation bits.

    Attributes:
        plans: the size model's arrays (weight methods and their columns, keep per group).
        act_bits: input activation bits, plans × layers.
    """

    plans: PlanBatch
    act_bits: np.ndarray

    def __len__(self) -> int:
        return len(self.plans)

    @classmethod
    def from_plans(cls, graph: ModelGraph, plans: Sequence[Plan]) -> LatencyBatch:
        column = {name: j for j, name in enumerate(graph.layers)}
        act = np.full((len(plans), len(column)), 32, dtype=np.int64)
        for i, plan in enumerate(plans):
            for name, layer_plan in plan.layers.items():
                act[i, column[name]] = layer_plan.act_bits
        return cls(plans=PlanBatch.from_plans(graph, plans), act_bits=act)


def plan_layer_configs(graph: ModelGraph, plans: Sequence[Plan] | LatencyBatch) -> LayerConfigs:
    """The deployed configuration of every layer under every plan: shape (plans, layers).

    Channels come from the size model's pruning arithmetic (`predictors.size.layer_bits`), so
    the two predictors cannot disagree about a pruned shape. Weight bits are what each weight
    method's deployed form runs at (VQ runs decoded, at 32: DESIGN.md, Latency).
    """
    batch = plans if isinstance(plans, LatencyBatch) else LatencyBatch.from_plans(graph, plans)
    parts = layer_bits(graph, batch.plans)
    specs = list(graph.layers.values())
    rows = [_static_columns(s) for s in specs]  # once per layer, not once per column
    static = {
        key: np.asarray([row[key] for row in rows], dtype=np.int64).reshape(1, len(rows))
        for key in ("kind", "kernel", "stride", "in_spatial", "out_spatial", "batch")
    }
    depthwise = np.asarray([s.is_depthwise for s in specs], dtype=bool)[None, :]
    groups = np.asarray([s.groups for s in specs], dtype=np.int64)[None, :]
    c_in, c_out = parts["c_in"], parts["c_out"]
    embedding = np.asarray([s.kind == "embedding" for s in specs], dtype=bool)[None, :]
    if embedding.any():  # its Linear stand-in: one input feature, a row of features out
        rows = np.asarray([s.row_length for s in specs], dtype=np.int64)[None, :]
        c_in, c_out = np.where(embedding, 1, c_in), np.where(embedding, rows, c_out)
    weight_bits = _deployed_weight_bits(batch.plans)
    return LayerConfigs.from_columns(
        c_in=c_in,
        c_out=c_out,
        groups=np.where(depthwise, c_out, groups),
        act_bits=batch.act_bits,
        weight_bits=weight_bits,
        **{k: np.broadcast_to(v, c_out.shape) for k, v in static.items()},
        **_neighbour_columns(graph, batch.act_bits == 8),
    )


def _neighbour_columns(graph: ModelGraph, int8: np.ndarray) -> dict[str, np.ndarray]:
    """`in_int8`, `out_int8` (plans × layers) and the static `joins_in`, `joins_out`, `pooled`,
    from the coupling groups: a layer's input is written by its input groups' layers, its output
    read by its own group's consumers (a group joined by a residual Add counts all its writers)."""
    names = list(graph.layers)
    index = {name: j for j, name in enumerate(names)}
    writers = {g.id: [index[n] for n in g.layers if n in index] for g in graph.groups}
    readers = {g.id: [index[n] for n in g.consumers if n in index] for g in graph.groups}
    groups = {g.id: g for g in graph.groups}

    def level(neighbours: list[int]) -> np.ndarray:
        if not neighbours:
            return np.zeros(int8.shape[0], dtype=np.int64)
        share = int8[:, neighbours].mean(axis=1)
        return np.where(share == 1, 2, np.where(share > 0, 1, 0))

    in_int8, out_int8 = np.zeros_like(int8, dtype=np.int64), np.zeros_like(int8, dtype=np.int64)
    joins_in, joins_out, pooled = (np.ones(len(names), dtype=np.int64) for _ in range(3))
    pooled[:] = 0
    for j, spec in enumerate(graph.layers.values()):
        before = [w for tie in spec.inputs for w in writers.get(tie.group, [])]
        after = readers.get(spec.group, []) if spec.group is not None else []
        in_int8[:, j], out_int8[:, j] = level(before), level(after)
        joins_in[j] = max(1, len(before))
        if spec.group in groups:
            joins_out[j] = max(1, len(writers[spec.group]))
        own = math.prod(spec.input_shape[2:]) if spec.kind != "linear" else 1
        pooled[j] = any(
            math.prod(graph.layers[names[w]].output_shape[2:]) > own
            for w in before
            if graph.layers[names[w]].kind != "linear" and spec.kind != "linear"
        )
    shape = int8.shape
    return {
        "in_int8": in_int8,
        "out_int8": out_int8,
        "joins_in": np.broadcast_to(joins_in[None, :], shape),
        "joins_out": np.broadcast_to(joins_out[None, :], shape),
        "pooled": np.broadcast_to(pooled[None, :], shape),
    }


def _deployed_weight_bits(plans: PlanBatch) -> np.ndarray:
    """Per plan and layer, the weight bits its method's deployed form runs at (32 when dense)."""
    bits = np.full(plans.method.shape, 32, dtype=np.int64)
    for unit, mask, columns in plans.by_method():
        bits[mask] = unit.deployed_weight_bits(columns)
    return bits
