"""Budgets as users write them, and what a search space can reach.

- `parse_size("1.2MiB", baseline_bytes)`: bytes from "123456", "300KB", "300KiB", "1.2MiB", "2MB"
  or a ratio of the uncompressed size, "x25" (1/25 of fp32).
- `parse_latency("15ms", reference_ms)`: milliseconds from "15", "15ms" or "0.015s", or a share of
  the uncompressed model's latency on the predictor's device, "x0.5" (half of it).
- `reachable_minimum(space, ...)`: the least size (exact), predicted latency and MACs any plan of
  a space reaches, so that a budget below them is refused before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from planner.options import layer_options
from predictors.size import MIB
from search_spaces.methods import activation_method
from search_spaces.plan import LayerPlan, Plan, PlanError
from search_spaces.space import SearchSpace

__all__ = ["BudgetError", "Reachable", "parse_latency", "parse_size", "reachable_minimum"]

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "kib": 1024, "mib": MIB, "gb": 1000**3}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


class BudgetError(PlanError):
    """A budget no plan of the space can meet, or one that cannot be read."""


def parse_size(text: str, baseline_bytes: float) -> float:
    """Bytes meant by `text`: a number of bytes with an optional unit (B, KB, KiB, MB, MiB, GB),
    or "x<ratio>" for the uncompressed size divided by the ratio.

    Raises:
        BudgetError: the text is neither.
    """
    text = str(text).strip()
    ratio = _ratio(text, "size budget", "a ratio", "x25")
    if ratio is not None:
        return baseline_bytes / ratio
    amount = _amount(text, _UNITS)
    if amount is None:
        raise BudgetError(
            f"size budget '{text}': give bytes (123456), a unit (300KiB, 1.2MiB, 2MB) "
            "or a ratio of the fp32 size (x25)"
        )
    return amount


_TIME_UNITS = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}


def parse_latency(text: str, reference_ms: float | None) -> float:
    """Milliseconds meant by `text`: a time ("15", "15ms", "0.015s", "800us"), or "x<share>"
    for that share of `reference_ms`, the uncompressed model's latency on the device ("x0.5":
    half of it; `LatencyPredictor.reference_ms`).

    Raises:
        BudgetError: the text is neither, or a share without a reference.
    """
    text = str(text).strip()
    share = _ratio(text, "latency budget", "a share of the uncompressed latency", "x0.5")
    if share is not None:
        if reference_ms is None:
            raise BudgetError(
                f"latency budget '{text}' is a share of the uncompressed model's latency, "
                "which needs a latency predictor (--latency-model FILE)"
            )
        return share * reference_ms
    amount = _amount(text, _TIME_UNITS)
    if amount is None:
        raise BudgetError(
            f"latency budget '{text}': give milliseconds (15, 15ms, 0.015s) or a share of the "
            "uncompressed model's latency (x0.5)"
        )
    return amount


def _ratio(text: str, budget: str, what: str, example: str) -> float | None:
    """The positive number after an "x" (None: `text` is no ratio).

    Raises:
        BudgetError: an "x" without a positive number after it.
    """
    if not text.lower().startswith("x"):
        return None
    try:
        value = float(text[1:])
    except ValueError:
        value = 0.0
    if not value > 0:
        raise BudgetError(f"{budget} '{text}': {what} is 'x' and a positive number, e.g. {example}")
    return value


def _amount(text: str, units: dict[str, float]) -> float | None:
    """A positive number with one of `units` (None: anything else)."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in units or float(match.group(1)) <= 0:
        return None
    return float(match.group(1)) * units[unit]


@dataclass(frozen=True)
class Reachable:
    """The least each budgeted quantity can be over a space (None where not computed).

    Attributes:
        size_bytes: exact: the smallest keep ratio everywhere and each layer's smallest option.
        latency_ms: the predicted latency of the fastest of a few extreme plans (a bound
            estimate: the predictor is not monotone by construction).
        macs: the deployed MACs with the smallest keep ratios.
    """

    size_bytes: float
    latency_ms: float | None = None
    macs: int | None = None


def _smallest_keeps(space: SearchSpace) -> dict[int, float]:
    return {gid: min(choices) for gid, choices in space.group_keep.items()}


def reachable_minimum(space: SearchSpace, latency=None) -> Reachable:
    """What the most compressed plans of `space` reach (see `Reachable`)."""
    from predictors.latency.features import plan_layer_configs

    graph = space.graph
    keeps = _smallest_keeps(space)
    options = layer_options(space, keeps)
    size_bits = sum(int(o.bits.min()) for o in options.values()) + graph.kept_bits
    # The fewest MACs and (usually) the least latency: every group at its smallest keep and no
    # activation quantizer (on a device without low-bit kernels quantizers cost time).
    layers = {}
    for name, c in space.layers.items():
        group = graph.layers[name].group
        keep = keeps.get(group, 1.0) if group is not None else 1.0
        layers[name] = LayerPlan(keep=keep, activations=_activations(c, max(c.act_bits)))
    plain = Plan(layers=layers, model=graph.model_name, fingerprint=graph.fingerprint)
    configs = plan_layer_configs(graph, [plain])
    macs = int(configs.macs.sum())
    latency_ms = None
    if latency is not None:
        low_bits = {
            name: LayerPlan(
                keep=p.keep,
                activations=_activations(space.layers[name], min(space.layers[name].act_bits)),
            )
            for name, p in layers.items()
        }
        candidates = [plain, Plan(layers=low_bits, model=graph.model_name)]
        latency_ms = float(np.min(latency.predict(graph, candidates)))
    return Reachable(size_bytes=size_bits / 8, latency_ms=latency_ms, macs=macs)


def _activations(choices, bits: int):
    """The layer's activation config at `bits` (None at 32)."""
    return activation_method(choices.act_method).config(bits)
