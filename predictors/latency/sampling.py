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
    "STRUCTURED_KEEPS",
    "config_macs",
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
    from search_spaces.methods import activation_method
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
                    activations=activation_method(choices.act_method).config(act_bits)
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
