"""Named plans that need no search: PQF's block sizes, uniform bits, uniform pruning.

A preset name is one or more parts joined by "+", applied left to right:
- `pqf-small`: PQF's "small blocks": m = 9 for 3×3 convs, m = 4 for 1×1 convs and Linear layers,
  k = 256; the classifier gets k = 2048 (k = 1024 when it has more than 2^20 weights, as PQF gives
  ResNet-50); the first conv stays uncompressed.
- `pqf-large`: "large blocks": m = 18 for 3×3 convs and m = 8 for 1×1 convs in bottleneck models
  (those with more 1×1 than 3×3 conv weights, as PQF's ResNet-50); otherwise as `pqf-small`.
- `bits:N`: N-bit weights everywhere but the first conv and the classifier.
- `keep:R`: keep ratio R on every prunable coupling group.
Other kernel sizes follow the same rule (m = K² or 2·K²); where a block size does not divide a
layer's row length, the largest divisor below it is used.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from search_spaces.graph import LayerSpec, ModelGraph
from search_spaces.knobs import WEIGHT_BITS, divisors
from search_spaces.methods import BitsConfig, VQConfig
from search_spaces.plan import (
    LayerPlan,
    Plan,
    PlanError,
    group_keeps,
    pruned_row_length,
    validate_plan,
)

__all__ = ["PRESET_HELP", "make_preset", "uniform_pq_at_size"]

PRESET_HELP = "pqf-small, pqf-large, bits:N (N in 1,2,3,4,8,16,32), keep:R (0<R≤1), joined by '+'"

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
