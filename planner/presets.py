"""Named plans that need no search: PQF's block sizes, uniform bits, uniform pruning.

A preset name is one or more parts joined by "+", applied left to right:
- `pqf-small`: PQF's "small blocks": m = 9 for 3×3 convs, m = 4 for 1×1 convs and Linear layers,
  k = 256; the classifier gets k = 2048 (k = 1024 when it has more than 2^20 weights, as PQF gives
  ResNet-50); the first conv stays uncompressed.
- `pqf-large`: "large blocks": m = 18 for 3×3 convs and m = 8 for 1×1 convs in bottleneck models
  (those with more 1×1 than 3×3 conv weights, as PQF's ResNet-50); otherwise as `pqf-small`.
- `bits:N`: N-bit weights everywhere but the first conv and the classifier.
- `keep:R`: keep ratio R on every prunable coupling group.
- `act:N`: N-bit inputs wherever bits:N compresses weights (all but the first conv and the
  classifier) and an activation quantizer runs (not an embedding's token ids, not inside a
  Transformer layer). 8 is the uniform u8 quantizer ("uint8", ONNX's QuantizeLinear), so
  `bits:8+act:8` is the int8 model that ONNX Runtime runs as int8 kernels; 2, 3 and 4 are N2UQ,
  which no CPU runtime runs fast (its layers run fp32 kernels on dequantized inputs).
Other kernel sizes follow the same rule (m = K² or 2·K²); where a block size does not divide a
layer's row length, the largest divisor below it is used.

Uniform baselines at a given size, for benchmarks that compare a searched plan with the simple
one of the same size: `uniform_pq_at_size` (the largest power-of-two k that fits) and
`uniform_mix_at_size` (one setting everywhere, or two neighbouring ones, within 1% of the size).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from search_spaces.graph import LayerSpec, ModelGraph
from search_spaces.knobs import WEIGHT_BITS, divisors
from search_spaces.methods import BitsConfig, VQConfig, activation_method
from search_spaces.plan import (
    LayerPlan,
    Plan,
    PlanError,
    group_keeps,
    pruned_row_length,
    validate_plan,
)

__all__ = ["PRESET_HELP", "make_preset", "uniform_mix_at_size", "uniform_pq_at_size"]

PRESET_HELP = (
    "pqf-small, pqf-large, bits:N (N in 1,2,3,4,8,16,32), keep:R (0<R≤1), act:N (input bits: "
    "8 is int8 on ONNX Runtime, 2,3,4 are N2UQ, which no CPU runtime runs fast), joined by '+'"
)

_PQF_K = 256
_PQF_CLASSIFIER_K_SMALL_FC = 2048  # ResNet-18's 512×1000 classifier
_PQF_CLASSIFIER_K_LARGE_FC = 1024  # ResNet-50's 2048×1000 classifier


def make_preset(graph: ModelGraph, name: str, *, model: str | None = None) -> Plan:
    """Build the plan a preset names for the model of `graph`.

    Args:
        graph: the model's graph.
        name: a preset (see the module docstring), for example "pqf-small" or "bits:4+keep:0.5".
        model: the model spec recorded in the plan (defaults to the graph's model name).

    Raises:
        PlanError: the preset name is unknown or its value is out of range.
    """
    layers: dict[str, LayerPlan] = {}
    for part in name.split("+"):
        part = part.strip()
        if part in ("pqf-small", "pqf-large"):
            layers = _pqf(graph, layers, large=part == "pqf-large")
        elif part.startswith("bits:"):
            layers = _bits(graph, layers, _parse(part, int))
        elif part.startswith("keep:"):
            layers = _keep(graph, layers, _parse(part, float))
        elif part.startswith("act:"):
            layers = _act(graph, layers, _parse(part, int))
        else:
            raise PlanError(f"unknown preset '{part}'; presets are {PRESET_HELP}")
    layers = _fit_block_sizes(graph, layers)
    plan = Plan(
        layers={n: layers[n] for n in graph.layers if n in layers},
        model=model or graph.model_name,
        fingerprint=graph.fingerprint,
        provenance={
            "source": f"preset:{name}",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    validate_plan(plan, graph)
    return plan


def _parse(part: str, kind: type) -> float:
    text = part.split(":", 1)[1]
    try:
        return kind(text)
    except ValueError:
        raise PlanError(
            f"preset '{part}': '{text}' is not a number; presets are {PRESET_HELP}"
        ) from None


def _block_size(spec: LayerSpec, *, large: bool, bottleneck: bool) -> int:
    if spec.kind == "linear":
        preferred = 4
    elif spec.kernel_elems == 1:
        preferred = 8 if large and bottleneck else 4
    else:
        preferred = spec.kernel_elems * (2 if large else 1)
    return max(d for d in divisors(spec.row_length) if d <= preferred)


def _fit_block_sizes(graph: ModelGraph, layers: dict[str, LayerPlan]) -> dict[str, LayerPlan]:
    """Where pruning leaves a row length that m does not divide, the largest divisor below m.

    Runs after every part, so "keep:0.5+pqf-small" and "pqf-small+keep:0.5" give the same plan.
    """
    keeps = group_keeps(Plan(layers), graph)
    out = dict(layers)
    for name, layer_plan in layers.items():
        vq = layer_plan.weights
        if not isinstance(vq, VQConfig):
            continue
        row = pruned_row_length(graph.layers[name], graph, keeps)
        if row % vq.m:
            m = max(d for d in divisors(row) if d <= vq.m)
            out[name] = replace(layer_plan, weights=VQConfig(k=vq.k, m=m))
    return out


def _is_bottleneck(graph: ModelGraph) -> bool:
    pointwise = sum(
        s.weight_elems for s in graph.layers.values() if s.kind != "linear" and s.kernel_elems == 1
    )
    spatial = sum(
        s.weight_elems for s in graph.layers.values() if s.kind != "linear" and s.kernel_elems > 1
    )
    return pointwise > spatial


def _pqf(graph: ModelGraph, layers: dict[str, LayerPlan], *, large: bool) -> dict[str, LayerPlan]:
    skip, head = graph.first_conv, graph.classifier
    bottleneck = _is_bottleneck(graph)
    out = dict(layers)
    for name, spec in graph.layers.items():
        if name == skip:
            continue
        k = _PQF_K
        if name == head:
            k = (
                _PQF_CLASSIFIER_K_SMALL_FC
                if spec.weight_elems <= 2**20
                else _PQF_CLASSIFIER_K_LARGE_FC
            )
        m = _block_size(spec, large=large, bottleneck=bottleneck)
        base = out.get(name, LayerPlan())
        out[name] = replace(base, weights=VQConfig(k=k, m=m))
    return out


def _bits(graph: ModelGraph, layers: dict[str, LayerPlan], bits: float) -> dict[str, LayerPlan]:
    if bits not in WEIGHT_BITS:
        raise PlanError(f"preset bits:{bits}: bits must be one of {list(WEIGHT_BITS)}")
    skip = {graph.first_conv, graph.classifier}
    out = dict(layers)
    for name in graph.layers:
        if name not in skip:
            base = out.get(name, LayerPlan())
            weights = BitsConfig(bits=int(bits)) if bits < 32 else None
            out[name] = replace(base, weights=weights)
    return out


# The activation quantizer of each input bit-width: u8 where ONNX Runtime has int8 kernels, N2UQ
# below 8 bits (nonuniform levels, which no CPU runtime has kernels for).
_ACT_METHODS = {8: "uint8", 4: "n2uq", 3: "n2uq", 2: "n2uq"}


def _act(graph: ModelGraph, layers: dict[str, LayerPlan], bits: float) -> dict[str, LayerPlan]:
    if bits not in (*_ACT_METHODS, 32):
        raise PlanError(f"preset act:{bits}: bits must be one of {[*_ACT_METHODS, 32]}")
    skip = {graph.first_conv, graph.classifier}
    activations = None if bits == 32 else activation_method(_ACT_METHODS[int(bits)])
    out = dict(layers)
    for name, spec in graph.layers.items():
        if name not in skip and spec.quantizable_inputs:
            config = None if activations is None else activations.config(int(bits))
            out[name] = replace(out.get(name, LayerPlan()), activations=config)
    return out


def _keep(graph: ModelGraph, layers: dict[str, LayerPlan], keep: float) -> dict[str, LayerPlan]:
    if not 0.0 < keep <= 1.0:
        raise PlanError(f"preset keep:{keep}: the keep ratio must be in (0, 1]")
    out = dict(layers)
    for group in graph.groups:
        if group.prunable:
            for name in group.layers:
                out[name] = replace(out.get(name, LayerPlan()), keep=keep)
    return out


def uniform_pq_at_size(graph: ModelGraph, size_bytes: float, *, model: str | None = None) -> Plan:
    """The uniform baseline at a size: PQF's small blocks with one k for every layer (the first
    conv kept), the largest power-of-two k whose plan fits in `size_bytes`.

    Raises:
        PlanError: even k = 2 does not fit.
    """
    from predictors.size import SizePredictor

    base = make_preset(graph, "pqf-small", model=model)
    sizes = SizePredictor(graph)
    best = None
    for k in (2**i for i in range(1, 13)):
        layers = {
            name: replace(lp, weights=replace(lp.weights, k=k))
            if isinstance(lp.weights, VQConfig)
            else lp
            for name, lp in base.layers.items()
        }
        plan = Plan(
            layers=layers,
            model=base.model,
            fingerprint=base.fingerprint,
            provenance={**base.provenance, "preset": f"uniform PQ k={k}"},
        )
        if sizes.predict([plan])[0] > size_bytes:
            break
        best = plan
    if best is None:
        raise PlanError(f"no uniform PQ plan fits in {size_bytes:,.0f} bytes")
    return best


_UNIFORM_KEEPS = (1.0, 0.75, 0.5, 0.25)  # the search's default keep ratios, least pruning first
_UNIFORM_BITS = (1, 2, 3, 4, 8, 16, 32)  # 32: dense


def uniform_mix_at_size(
    graph: ModelGraph,
    size_bytes: float,
    *,
    model: str | None = None,
    protect_ends: bool = True,
    tolerance: float = 0.01,
    keeps: tuple[float, ...] = _UNIFORM_KEEPS,
) -> Plan:
    """The uniform baseline *at* a size (not under it): one setting on every compressed layer,
    or two neighbouring ones, whose plan is within `tolerance` of `size_bytes`.

    The settings considered, in this order of preference:
    - for each keep ratio of `keeps` (default 1, 0.75, 0.5, 0.25: the least pruning first), the
      same ratio on every prunable coupling group (pruning only where the unpruned settings
      cannot get that small);
    - within it, PQ with PQF's small blocks (m = K² for convs, 4 for 1×1 convs and Linear
      layers; the largest divisor of the pruned row length below that) and one k for every
      layer, k = 2, 4, ..., 4096; then b-bit weights, b = 1, 2, 3, 4, 8, 16, 32 (dense);
    - one setting whose size is within `tolerance` is taken as it is (the closest of its
      family); where none is, the two neighbouring settings of a family that bracket the size
      (k = 2^j and 2^(j+1), or b-bit and the next width) are mixed: the layers go to the larger
      one, largest layer first, as long as the total stays below the size's upper bound, until
      it is within `tolerance`.
    Activations stay at 32 bits and learning-rate multipliers at 1. With `protect_ends`, the
    first conv and the classifier keep 32-bit weights, as the planner's `protect_ends` (their
    channels are still pruned with their coupling group); without it they are compressed like
    every other layer. (`uniform_pq_at_size` keeps the first conv only, as PQF.)

    Args:
        graph: the model's graph.
        size_bytes: the size to land on, in bytes by the size convention (`predictors.size`).
        model: the model spec recorded in the plan (defaults to the graph's model name).
        protect_ends: keep the first conv and the classifier at 32 bits.
        tolerance: the largest relative difference |size / size_bytes − 1| accepted.
        keeps: the keep ratios tried, in order.

    Returns:
        A valid plan for `graph` whose size is within `tolerance` of `size_bytes`; its
        provenance's "preset" says which settings it mixes on how many layers.

    Raises:
        PlanError: no such plan: the size is below the smallest uniform plan or above the dense
            model, or no mix lands within `tolerance` (the message gives the reachable range).
    """
    from predictors.size import SizePredictor, size_report

    if not size_bytes > 0 or not tolerance >= 0:
        raise PlanError(
            f"uniform_mix_at_size needs a positive size and tolerance, not {size_bytes!r} and "
            f"{tolerance!r}"
        )
    ends = {graph.first_conv, graph.classifier} if protect_ends else set()
    compressed = [name for name in graph.layers if name not in ends]
    prunable = {name for group in graph.groups if group.prunable for name in group.layers}
    low, high = size_bytes * (1 - tolerance), size_bytes * (1 + tolerance)
    seen: list[float] = []

    def plan_of(layers: dict[str, LayerPlan], preset: str) -> Plan:
        return Plan(
            layers={n: layers[n] for n in graph.layers if n in layers},
            model=model or graph.model_name,
            fingerprint=graph.fingerprint,
            provenance={
                "source": "uniform_mix_at_size",
                "preset": preset,
                "target_bytes": float(size_bytes),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    for keep in keeps:
        families = {
            "PQ k": [
                (k, _uniform_layers(graph, compressed, prunable, keep, k=k))
                for k in (2**i for i in range(1, 13))
            ],
            "bits": [
                (b, _uniform_layers(graph, compressed, prunable, keep, bits=b))
                for b in _UNIFORM_BITS
            ],
        }
        reports = {
            family: [size_report(plan_of(layers, ""), graph) for _, layers in settings]
            for family, settings in families.items()
        }
        sizes = {f: [r.total_bits / 8 for r in rs] for f, rs in reports.items()}
        for values in sizes.values():
            seen.extend(values)
        # One setting everywhere, where one lands within the tolerance.
        for family, settings in families.items():
            close = [
                (abs(size / size_bytes - 1), value, layers)
                for (value, layers), size in zip(settings, sizes[family], strict=True)
                if low <= size <= high
            ]
            if close:
                _, value, layers = min(close, key=lambda c: c[0])
                return _checked(plan_of(layers, f"uniform {family}={value}, keep {keep:g}"), graph)
        # Two neighbouring settings: layers move to the larger one, largest layer first.
        for family, settings in families.items():
            for j in range(len(settings) - 1):
                if not sizes[family][j] < size_bytes < sizes[family][j + 1]:
                    continue
                (small, small_layers), (large, large_layers) = settings[j], settings[j + 1]
                bits_small = {s.name: s.bits for s in reports[family][j].layers}
                bits_large = {s.name: s.bits for s in reports[family][j + 1].layers}
                deltas = {n: bits_large[n] - bits_small[n] for n in compressed}
                moved = _greedy_moves(
                    sorted(compressed, key=lambda n: -graph.layers[n].weight_elems),
                    deltas,
                    reports[family][j].total_bits,
                    target=size_bytes * 8,
                    high=high * 8,
                )
                layers = dict(small_layers) | {n: large_layers[n] for n in moved}
                total = reports[family][j].total_bits + sum(deltas[n] for n in moved)
                if total / 8 >= low:
                    preset = (
                        f"uniform {family}={small}/{large} ({family}={large} on {len(moved)} of "
                        f"{len(compressed)} layers), keep {keep:g}"
                    )
                    plan = plan_of(layers, preset)
                    predicted = SizePredictor(graph).predict([plan])[0]
                    if low <= predicted <= high:
                        return _checked(plan, graph)
    raise PlanError(
        f"no uniform plan of {model or graph.model_name} lands within {tolerance:.1%} of "
        f"{size_bytes:,.0f} bytes: uniform PQ and b-bit plans (keep {', '.join(map(str, keeps))}) "
        f"span {min(seen):,.0f}–{max(seen):,.0f} bytes"
    )


def _greedy_moves(
    order: list[str], deltas: dict[str, int], total: int, *, target: float, high: float
) -> list[str]:
    """The layers to move to the larger setting: in `order`, each one whose move keeps the total
    at most `target`; then one more where that lands closer to `target` (and at most `high`)."""
    moved = []
    for name in order:
        if deltas[name] > 0 and total + deltas[name] <= target:
            total += deltas[name]
            moved.append(name)
    closer = [
        n
        for n in order
        if n not in moved
        and deltas[n] > 0
        and total + deltas[n] <= high
        and abs(total + deltas[n] - target) < abs(total - target)
    ]
    if closer:
        moved.append(min(closer, key=lambda n: abs(total + deltas[n] - target)))
    return moved


def _uniform_layers(
    graph: ModelGraph,
    compressed: list[str],
    prunable: set[str],
    keep: float,
    *,
    k: int | None = None,
    bits: int | None = None,
) -> dict[str, LayerPlan]:
    """Every layer's plan for one uniform setting: PQ with k (PQF's small blocks), or b bits."""
    layers = {}
    bottleneck = _is_bottleneck(graph)
    for name, spec in graph.layers.items():
        weights = None
        if name in compressed:
            if k is not None:
                weights = VQConfig(k=k, m=_block_size(spec, large=False, bottleneck=bottleneck))
            elif bits is not None and bits < 32:
                weights = BitsConfig(bits=bits)
        layer_keep = keep if name in prunable else 1.0
        if weights is not None or layer_keep < 1.0:
            layers[name] = LayerPlan(weights=weights, keep=layer_keep)
    return _fit_block_sizes(graph, layers)


def _checked(plan: Plan, graph: ModelGraph) -> Plan:
    validate_plan(plan, graph)
    return plan
