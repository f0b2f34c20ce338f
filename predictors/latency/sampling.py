"""What profiling measures, beside the user's own plans: random plans of a search space (spread
from barely to heavily compressed), the structured plans users ask for (uniform keeps, with and
without 8-bit activations), and random single layers that teach the latency network layer kinds
a profiled model lacks. Drawing them runs nothing; `predictors.latency.profiling` times them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from predictors.latency.features import LayerConfigs
from search_spaces.macs import layer_macs
from search_spaces.plan import Plan

__all__ = [
    "INT8_REGIONS",
    "STRUCTURED_KEEPS",
    "config_macs",
    "dense_plan",
    "int8_region_plans",
    "kernel_mix_plans",
    "random_plans",
    "structured_plans",
    "synthetic_layer_configs",
]

STRUCTURED_KEEPS = (0.35, 0.5, 0.65, 0.8, 0.95, 1.0)


def structured_plans(space, keeps: Sequence[float] = STRUCTURED_KEEPS) -> list[Plan]:
    """The plans users ask for, which random plans rarely are: every prunable group at one keep
    ratio (each at its nearest allowed one), with 32-bit activations and with 8-bit ones wherever
    the layer takes them. Weights stay dense: on a device without low-bit kernels the deployed
    form decodes them, so a preset's latency (PQF, b-bit, with keep:R) is one of these plans'.
    """
    from search_spaces.methods import activation_method_for
    from search_spaces.plan import LayerPlan

    graph = space.graph
    plans = []
    for keep in keeps:
        group_keep = {
            gid: min(choices, key=lambda r: abs(r - keep))
            for gid, choices in space.group_keep.items()
        }
        for act_bits in (32, 8):
            layers = {}
            for name, choices in space.layers.items():
                quantized = act_bits < 32 and act_bits in choices.act_bits
                layer = LayerPlan(
                    activations=activation_method_for(choices.act_method, act_bits).config(act_bits)
                    if quantized
                    else None,
                    keep=group_keep.get(graph.layers[name].group, 1.0),
                )
                if layer != LayerPlan():
                    layers[name] = layer
            source = f"structured:keep={keep:g},act_bits={act_bits}"
            plans.append(
                Plan(
                    layers=layers,
                    model=graph.model_name,
                    fingerprint=graph.fingerprint,
                    provenance={"source": source},
                )
            )
    return plans


# The int8 regions users compare (`int8_region_plans`): which of the layers that take 8-bit
# inputs do, in graph order.
INT8_REGIONS = ("all", "first-half", "second-half", "alternating")


def dense_plan(
    space, act_bits: dict[str, int], keep: float | dict[int, float] = 1.0, source: str = ""
) -> Plan:
    """A plan of `space` with dense weights, these layers' input bits (the rest 32) and keep
    ratios (one for every group, each at its nearest allowed one, or group id → ratio); its
    provenance's source is `source`. What latency depends on, and no more."""
    from search_spaces.methods import activation_method_for
    from search_spaces.plan import LayerPlan

    graph = space.graph
    if not isinstance(keep, dict):
        keep = {
            gid: min(choices, key=lambda r: abs(r - keep))
            for gid, choices in space.group_keep.items()
        }
    layers = {}
    for name, choices in space.layers.items():
        bits = act_bits.get(name, 32)
        layer = LayerPlan(
            activations=activation_method_for(choices.act_method, bits).config(bits)
            if bits < 32
            else None,
            keep=keep.get(graph.layers[name].group, 1.0),
        )
        if layer != LayerPlan():
            layers[name] = layer
    return Plan(
        layers=layers,
        model=graph.model_name,
        fingerprint=graph.fingerprint,
        provenance={"source": source},
    )


def _int8_layers(space) -> list[str]:
    """The layers that take 8-bit inputs, in graph order."""
    return [name for name, choices in space.layers.items() if 8 in choices.act_bits]


def int8_region_plans(space, keep: float = 1.0) -> list[Plan]:
    """Plans with 8-bit inputs (int8 kernels on ONNX Runtime) in one region of the layers that
    take them (`INT8_REGIONS`), the others fp32, every group at `keep`: where the boundaries
    between kernel classes are few (all, halves) and many (alternating)."""
    names = _int8_layers(space)
    half = len(names) // 2
    chosen = {
        "all": names,
        "first-half": names[:half],
        "second-half": names[half:],
        "alternating": names[::2],
    }
    return [
        dense_plan(space, dict.fromkeys(chosen[region], 8), keep, f"int8:{region},keep={keep:g}")
        for region in INT8_REGIONS
    ]


def kernel_mix_plans(space, n: int, *, seed: int = 0) -> list[Plan]:
    """`n` plans that mix kernel classes as a runtime with int8 kernels meets them: 8-bit inputs
    on a contiguous region of the layers, on every second or third layer, on one or two layers,
    or on each layer with a drawn odds; a fifth of them with some fp32 layers at 2 to 4 bits
    instead (N2UQ, which ONNX Runtime runs slower than fp32); half of them pruned, every group
    at one drawn keep or each at its own. Weights stay dense: latency depends on the structure.
    """
    rng = np.random.default_rng(seed)
    names = _int8_layers(space)
    low = sorted({b for c in space.layers.values() for b in c.act_bits if b < 8})
    keeps = sorted({k for choices in space.group_keep.values() for k in choices})
    plans = []
    for _ in range(n):
        pattern = ["region", "strided", "single", "odds"][rng.integers(4)]
        count = len(names)
        if pattern == "region" and count:
            start = int(rng.integers(count))
            chosen = names[start : start + int(rng.integers(1, count - start + 1))]
        elif pattern == "strided":
            step = int(rng.integers(2, 4))
            chosen = names[int(rng.integers(step)) :: step]
        elif pattern == "single":
            chosen = (
                [
                    names[i]
                    for i in rng.choice(count, min(count, 1 + int(rng.integers(2))), replace=False)
                ]
                if count
                else []
            )
        else:
            odds = rng.random()
            chosen = [name for name in names if rng.random() < odds]
        act_bits = dict.fromkeys(chosen, 8)
        if low and rng.random() < 0.2:
            for name, choices in space.layers.items():
                lower = [b for b in choices.act_bits if b < 8]
                if name not in act_bits and lower and rng.random() < 0.3:
                    act_bits[name] = int(lower[rng.integers(len(lower))])
        keep: float | dict[int, float] = 1.0
        if keeps and rng.random() < 0.5:
            if rng.random() < 0.5:
                keep = float(keeps[rng.integers(len(keeps))])
            else:
                keep = {
                    gid: float(choices[rng.integers(len(choices))])
                    for gid, choices in space.group_keep.items()
                }
        plans.append(dense_plan(space, act_bits, keep, f"kernel-mix:{pattern}"))
    return plans


def random_plans(space, n: int, *, seed: int = 0) -> list[Plan]:
    """`n` random plans of a `SearchSpace`, spread from barely to heavily compressed.

    Drawing every knob uniformly makes every plan prune about half its groups, so the latencies
    bunch together. Each plan here first draws how often it prunes and quantizes activations
    (uniform in [0, 1]), then draws each group and layer with those odds.
    """
    rng = np.random.default_rng(seed)
    distributions = space.to_optuna()
    plans = []
    for _ in range(n):
        prune_odds, act_odds = rng.random(2)
        params: dict[str, Any] = {}
        for name, dist in distributions.items():
            choices = list(dist.choices)
            if name.endswith("/keep"):
                smaller = [c for c in choices if c < 1.0]
                prune = smaller and rng.random() < prune_odds
                params[name] = smaller[rng.integers(len(smaller))] if prune else max(choices)
            elif name.endswith("/act_bits"):
                lower = [c for c in choices if c < 32]
                quantize = lower and rng.random() < act_odds
                params[name] = lower[rng.integers(len(lower))] if quantize else max(choices)
            else:
                params[name] = choices[rng.integers(len(choices))]
        plans.append(space.decode(params))
    return plans


def synthetic_layer_configs(n: int, *, batch: int = 1, seed: int = 0, max_macs: float = 3e8):
    """`n` random layer configurations spanning what CNNs run: dense, pointwise and depthwise
    convs over 7²…224² inputs, strided or not, and Linear layers; with and without activation
    quantization. MACs (per example) are kept below `max_macs` so that none takes long to time.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, int]] = []
    while len(rows) < n:
        family = rng.choice(["dense", "pointwise", "depthwise", "linear"], p=[0.3, 0.3, 0.25, 0.15])
        act_bits = int(rng.choice([32, 32, 2, 4, 8]))
        channels = lambda: int(8 * round(2 ** rng.uniform(1, 7)))  # noqa: E731 (8..1024)
        if family == "linear":
            c_in, c_out = channels(), channels()
            row = {
                "kind": 2,
                "c_in": c_in,
                "c_out": c_out,
                "groups": 1,
                "kernel": 1,
                "stride": 1,
                "in_spatial": 1,
                "out_spatial": 1,
            }
        else:
            side = int(rng.choice([7, 14, 28, 56, 112, 224]))
            stride = int(rng.choice([1, 1, 2]))
            out_side = (side - 1) // stride + 1
            kernel_side = {"dense": int(rng.choice([3, 3, 5, 7])), "pointwise": 1}.get(
                family, int(rng.choice([3, 5]))
            )
            c_in = channels()
            c_out = c_in if family == "depthwise" else channels()
            row = {
                "kind": 0,
                "c_in": c_in,
                "c_out": c_out,
                "groups": c_in if family == "depthwise" else 1,
                "kernel": kernel_side**2,
                "stride": stride,
                "in_spatial": side * side,
                "out_spatial": out_side * out_side,
            }
        row.update(batch=batch, act_bits=act_bits, weight_bits=32)
        if config_macs(row) // batch <= max_macs:  # per example
            rows.append(row)
    return LayerConfigs.from_columns(**{k: [r[k] for r in rows] for k in rows[0]})


def config_macs(config: dict[str, int]) -> int:
    """The MACs of one layer configuration (a row of `LayerConfigs`)."""
    keys = ("c_out", "c_in", "groups", "kernel", "out_spatial", "batch")
    return layer_macs(**{key: config[key] for key in keys})
