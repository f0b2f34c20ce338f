"""Budgets as users write them, and what a search space can reach.

- `parse_size("1.2MiB", baseline_bytes)`: bytes from "123456", "300KB", "300KiB", "1.2MiB", "2MB"
  or a ratio of the uncompressed size, "x25" (1/25 of fp32).
- `parse_latency("15ms", reference_ms)`: milliseconds from "15", "15ms" or "0.015s", or a share of
  the uncompressed model's latency on the predictor's device, "x0.5" (half of it).
- `reachable_minimum(space, ...)`: the least size (exact), predicted latency and MACs any plan of
  a space reaches, so that a budget below them is refused before anything runs.
- `what_caps_size(space)`: what the smallest plan still spends its bytes on (modules kept as is,
  protected ends, layers at their smallest option), for the message that refuses a budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from planner.options import layer_options
from predictors.size import MIB
from search_spaces.methods import activation_method_for
from search_spaces.plan import LayerPlan, Plan, PlanError
from search_spaces.space import SearchSpace

__all__ = [
    "BudgetError",
    "Reachable",
    "SizePart",
    "format_bytes",
    "format_bytes_pair",
    "format_ms_pair",
    "parse_latency",
    "parse_size",
    "reachable_minimum",
    "size_refusal",
    "what_caps_size",
]

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
    if not math.isfinite(value) or value > 1e9:  # "x1e400" is inf: it would allow 0 bytes
        raise BudgetError(f"{budget} '{text}': {value:g} is too large a ratio; e.g. {example}")
    return value


def _amount(text: str, units: dict[str, float]) -> float | None:
    """A positive number with one of `units` (None: anything else)."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in units or float(match.group(1)) <= 0:
        return None
    amount = float(match.group(1)) * units[unit]
    return amount if math.isfinite(amount) else None


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
    return activation_method_for(choices.act_method, bits).config(bits)


@dataclass(frozen=True)
class SizePart:
    """A share of the smallest plan's size: a layer, a kept module, or kept modules of one kind.

    Attributes:
        what: how a message names it ("'encoder.tok'", "12 LayerNorm modules").
        bits: its bits in the smallest plan.
        why: why it is not smaller ("kept as is: ...", "protected end", "at its smallest option").
        fixed: no knob of the space can make it smaller.
    """

    what: str
    bits: int
    why: str
    fixed: bool


def what_caps_size(space: SearchSpace) -> list[SizePart]:
    """Every share of the smallest plan's size, largest first (see `SizePart`)."""
    graph = space.graph
    options = layer_options(space, _smallest_keeps(space))
    ends = {graph.first_conv, graph.classifier}
    parts = []
    for name, layer_options_ in options.items():
        choices = space.layers[name]
        bits = int(layer_options_.bits.min())
        if choices.methods != ("none",):
            parts.append(SizePart(f"'{name}'", bits, "at its smallest option", False))
        elif name in ends and space.layer_knobs[name].methods == ("none",):
            why = "a protected end at 32 bits, which --protect-ends no searches"
            parts.append(SizePart(f"'{name}'", bits, why, True))
        else:
            why = f"dense: {choices.note}" if choices.note else "dense by its knobs"
            parts.append(SizePart(f"'{name}'", bits, why, True))
    by_kind: dict[tuple[str, str], list] = {}
    for module in graph.kept:
        by_kind.setdefault((module.kind, module.reason), []).append(module)
    for (kind, reason), modules in by_kind.items():
        what = f"'{modules[0].name}'" if len(modules) == 1 else f"{len(modules)} {kind} modules"
        bits = sum(m.bits for m in modules)
        parts.append(SizePart(what, bits, f"kept as is: {reason}", True))
    return sorted(parts, key=lambda part: -part.bits)


def size_refusal(space: SearchSpace, budget_bytes: float, smallest_bytes: float) -> str:
    """The one line that refuses a size budget below the smallest plan: what caps the ratio,
    with its bytes, and the way out that can work."""
    baseline = space.graph.baseline_bits / 8
    parts = what_caps_size(space)
    total = sum(part.bits for part in parts) or 1
    shown, covered = [], 0
    for part in parts:
        if len(shown) == 4 or covered >= 0.8 * total:
            break
        shown.append(f"{part.what} {format_bytes(part.bits / 8)}, {part.why}")
        covered += part.bits
    fixed = sum(part.bits for part in parts if part.fixed)
    budget, smallest = format_bytes_pair(budget_bytes, smallest_bytes)
    if fixed >= 0.5 * total:
        protected = any(part.fixed and "protected" in part.why for part in parts)
        way_out = (
            f"{format_bytes(fixed / 8)} of it no knob can shrink: raise --size-budget to at "
            f"least {smallest}" + (" or pass --protect-ends no" if protected else "")
        )
    else:
        way_out = (
            f"raise --size-budget to at least {smallest}, or allow smaller options: lower "
            "--keep, fewer --weight-bits, smaller --vq-k (SearchKnobs in Python)"
        )
    return (
        f"size budget {budget} is below the smallest plan this space reaches, {smallest} "
        f"(×{baseline / smallest_bytes:.1f}); most of it is {'; '.join(shown)}. "
        f"{way_out[0].upper()}{way_out[1:]}"
    )


def format_bytes(n: float) -> str:
    """`n` bytes for people: MiB, KiB or B."""
    if n >= 2**20:
        return f"{n / 2**20:.3f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def format_bytes_pair(a: float, b: float) -> tuple[str, str]:
    """`a` and `b` bytes as `format_bytes` writes them, or in bytes with as many decimals as it
    takes where that would read the same for different figures: a refusal that says "2.0 KiB is
    below 2.0 KiB" tells the reader nothing."""
    first, second = format_bytes(a), format_bytes(b)
    digits = 0
    while first == second and a != b and digits < 6:
        first, second = f"{a:,.{digits}f} B", f"{b:,.{digits}f} B"
        digits += 1
    return first, second


def format_ms_pair(a: float, b: float) -> tuple[str, str]:
    """`a` and `b` milliseconds with 4 significant digits, or as many more as make different
    figures read differently."""
    digits = 4
    first, second = f"{a:.{digits}g} ms", f"{b:.{digits}g} ms"
    while first == second and a != b and digits < 12:
        digits += 1
        first, second = f"{a:.{digits}g} ms", f"{b:.{digits}g} ms"
    return first, second
