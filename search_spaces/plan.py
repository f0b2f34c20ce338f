"""`Plan`: what to do to each layer, as one versioned, validated JSON document.

A plan is the hand-off between the planner and the engine. It maps fully qualified layer names to
frozen `LayerPlan`s, in order; a layer that is absent stays as it is. It carries the budgets it was
planned for, the fingerprint of the model it was planned on, and where it came from.

Two levels of checking:
- `LayerPlan.__post_init__` and `Plan.from_dict` check what a plan says on its own (types, ranges,
  VQ and bits not both set);
- `validate_plan(plan, graph)` checks it against a model (layer names, m dividing the row length
  after pruning, one keep ratio per coupling group, the fingerprint).
Every error is a `PlanError` whose message names the layer and the field.

The plan types live here, below the planner, because the size predictor and the engine read plans
too and must not import the planner.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from search_spaces.knobs import (
    ACT_BITS,
    K_MAX,
    K_MIN,
    WEIGHT_BITS,
    divisors,
    is_power_of_two,
    kept_channels,
)

if TYPE_CHECKING:
    from search_spaces.graph import LayerSpec, ModelGraph

__all__ = [
    "PLAN_FORMAT",
    "SCHEMA_VERSION",
    "Budget",
    "LayerPlan",
    "Plan",
    "PlanError",
    "group_keeps",
    "pruned_channels",
    "pruned_row_length",
    "validate_plan",
]

PLAN_FORMAT = "compplan-plan"
SCHEMA_VERSION = 1


class PlanError(ValueError):
    """A plan that is malformed, or does not fit the model; the message says what to change."""

    def __init__(self, message: str, *, layer: str | None = None, field: str | None = None):
        where = []
        if layer is not None:
            where.append(f"layer '{layer}'")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join([*where, message]))
        self.layer = layer
        self.field = field


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class LayerPlan:
    """What to do to one layer. The defaults leave it as it is.

    A layer takes vector quantization (`k` and `m`, optionally `d_tilde`) or b-bit weights
    (`weight_bits`), not both.

    Attributes:
        k: VQ clusters, a power of two in 2..4096 (clamped to the layer's k_eff), or None.
        m: VQ subvector length; divides the layer's row length D after pruning.
        d_tilde: LR²VQ clustering dimensionality, 1..m; None or m means plain PQ.
        weight_bits: 1, 2, 3, 4, 8, 16 or 32 (None: 32, or VQ when k is set).
        act_bits: input activation bits, 2, 3, 4, 8 or 32.
        keep: output-channel keep ratio in (0, 1]; equal across a coupling group.
        lr_mult: fine-tune learning-rate multiplier ≥ 0; 0 freezes the layer.
    """

    k: int | None = None
    m: int | None = None
    d_tilde: int | None = None
    weight_bits: int | None = None
    act_bits: int = 32
    keep: float = 1.0
    lr_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.k is not None and not _is_int(self.k):
            raise PlanError(f"k={self.k!r} must be an integer (a power of two)", field="k")
        if self.k is not None and not is_power_of_two(self.k):
            raise PlanError(f"k={self.k!r} is not a power of two", field="k")
        if self.k is not None and not K_MIN <= self.k <= K_MAX:
            raise PlanError(f"k={self.k} is outside {K_MIN}..{K_MAX}", field="k")
        if (self.k is None) != (self.m is None):
            missing = "m" if self.m is None else "k"
            raise PlanError("vector quantization needs both k and m", field=missing)
        if self.m is not None and (not _is_int(self.m) or self.m < 1):
            raise PlanError(f"m={self.m!r} is not a positive integer", field="m")
        if self.d_tilde is not None:
            if self.m is None:
                raise PlanError(
                    "d_tilde is set without vector quantization (k, m)", field="d_tilde"
                )
            if not _is_int(self.d_tilde) or not 1 <= self.d_tilde <= self.m:
                raise PlanError(
                    f"d_tilde={self.d_tilde!r} must be in 1..m={self.m}", field="d_tilde"
                )
        if self.weight_bits is not None:
            if self.k is not None:
                raise PlanError(
                    "VQ (k, m) and weight_bits are both set; a layer takes one of them",
                    field="weight_bits",
                )
            if not _is_int(self.weight_bits) or self.weight_bits not in WEIGHT_BITS:
                raise PlanError(
                    f"weight_bits={self.weight_bits!r} is not one of {list(WEIGHT_BITS)}",
                    field="weight_bits",
                )
        if not _is_int(self.act_bits) or self.act_bits not in ACT_BITS:
            raise PlanError(
                f"act_bits={self.act_bits!r} is not one of {list(ACT_BITS)}", field="act_bits"
            )
        if not _is_number(self.keep) or not 0.0 < self.keep <= 1.0:
            raise PlanError(f"keep={self.keep!r} is outside (0, 1]", field="keep")
        if not _is_number(self.lr_mult) or self.lr_mult < 0:
            raise PlanError(f"lr_mult={self.lr_mult!r} must be a number ≥ 0", field="lr_mult")

    @property
    def method(self) -> str:
        """ "vq", "bits" (fewer than 32 weight bits) or "none"."""
        if self.k is not None:
            return "vq"
        if self.weight_bits is not None and self.weight_bits < 32:
            return "bits"
        return "none"

    @property
    def clustering_dim(self) -> int | None:
        """d̃ with its default filled in: m for plain PQ, None without VQ."""
        return self.d_tilde if self.d_tilde is not None else self.m

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults, so plan files stay short."""
        defaults = LayerPlan()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        }

    @classmethod
    def from_dict(cls, data: object, *, layer: str | None = None) -> LayerPlan:
        if not isinstance(data, dict):
            raise PlanError(
                f"expected a JSON object of knobs, got {type(data).__name__}", layer=layer
            )
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise PlanError(
                    f"unknown knob{hint}; knobs are {', '.join(known)}", layer=layer, field=str(key)
                )
        try:
            return cls(**data)
        except PlanError as error:
            raise PlanError(str(error).split(": ", 1)[-1], layer=layer, field=error.field) from None


@dataclass(frozen=True)
class Budget:
    """Hard limits a plan was searched under; None means no limit.

    Attributes:
        size_bytes: the compressed model's size by the size convention.
        latency_ms: predicted latency on the target device.
        macs: multiply-accumulates per example.
    """

    size_bytes: int | None = None
    latency_ms: float | None = None
    macs: int | None = None

    def __post_init__(self) -> None:
        for name in ("size_bytes", "latency_ms", "macs"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise PlanError(
                    f"{value!r} must be a positive number or null", field=f"budget.{name}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """An ordered mapping from layer name to `LayerPlan`, with budgets and metadata.

    Attributes:
        layers: layer name → LayerPlan, in the model's order; absent layers stay as they are.
        model: the model spec the plan was made for (for example "zoo:resnet18").
        fingerprint: `ModelGraph.fingerprint` of that model ("" skips the check).
        budget: the budgets the plan was searched under.
        provenance: free-form facts about where the plan came from (tool, preset, study, time).
    """

    layers: Mapping[str, LayerPlan]
    model: str = ""
    fingerprint: str = ""
    budget: Budget = field(default_factory=Budget)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, layer_plan in self.layers.items():
            if not isinstance(layer_plan, LayerPlan):
                raise PlanError(
                    f"expected a LayerPlan, got {type(layer_plan).__name__}", layer=name
                )
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))

    def __reduce__(self):
        # The read-only mapping views cannot be pickled; rebuild from plain dicts (copy, pickle,
        # and Ray's object store all go through here).
        args = (dict(self.layers), self.model, self.fingerprint, self.budget, dict(self.provenance))
        return (Plan, args)

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerPlan:
        return self.layers[name]

    def get(self, name: str) -> LayerPlan:
        """The layer's plan, or the default (leave as is) when the plan does not name it."""
        return self.layers.get(name, _UNCHANGED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "budget": self.budget.to_dict(),
            "provenance": dict(self.provenance),
            "layers": {name: lp.to_dict() for name, lp in self.layers.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: object) -> Plan:
        """Build a plan from its JSON object, refusing anything it does not understand.

        Raises:
            PlanError: the object is not a compplan plan of a known schema version, or a field is
                missing, unknown, of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise PlanError(f"a plan is a JSON object, not a {type(data).__name__}")
        if data.get("format") != PLAN_FORMAT:
            raise PlanError(
                f'not a compplan plan (expected "format": "{PLAN_FORMAT}")', field="format"
            )
        version = data.get("schema_version")
        if not _is_int(version) or version < 1:
            raise PlanError(f"{version!r} is not a schema version", field="schema_version")
        if version > SCHEMA_VERSION:
            raise PlanError(
                f"schema version {version} is newer than this compplan reads ({SCHEMA_VERSION}); "
                "upgrade compplan",
                field="schema_version",
            )
        allowed = {
            "format",
            "schema_version",
            "model",
            "fingerprint",
            "budget",
            "provenance",
            "layers",
        }
        for key in data:
            if key not in allowed:
                raise PlanError(
                    f"unknown top-level key; keys are {', '.join(sorted(allowed))}", field=str(key)
                )
        layers = data.get("layers")
        if not isinstance(layers, dict):
            raise PlanError("must be a JSON object mapping layer names to knobs", field="layers")
        for key in ("model", "fingerprint"):
            if not isinstance(data.get(key, ""), str):
                raise PlanError("must be a string", field=key)
        budget = data.get("budget") or {}
        if not isinstance(budget, dict):
            raise PlanError("must be a JSON object", field="budget")
        unknown = set(budget) - {f.name for f in fields(Budget)}
        if unknown:
            raise PlanError(f"unknown budget keys {sorted(unknown)}", field="budget")
        provenance = data.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise PlanError("must be a JSON object", field="provenance")
        return cls(
            layers={name: LayerPlan.from_dict(knobs, layer=name) for name, knobs in layers.items()},
            model=data.get("model", ""),
            fingerprint=data.get("fingerprint", ""),
            budget=Budget(**budget),
            provenance=provenance,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        except json.JSONDecodeError as error:
            raise PlanError(
                f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
            ) from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan file. Raises PlanError naming the file for anything wrong with it."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise PlanError(f"plan file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise PlanError(f"cannot read plan file {path}: {error}") from None
        try:
            return cls.from_json(text)
        except PlanError as error:
            raise PlanError(f"{path}: {error}") from None


_UNCHANGED = LayerPlan()


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys silently; a plan must not."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise PlanError(f"the key '{key}' appears twice in one JSON object")
        seen[key] = value
    return seen


def group_keeps(plan: Plan, graph: ModelGraph) -> dict[int, float]:
    """The keep ratio of every coupling group under `plan` (1.0 where nothing is pruned).

    Raises:
        PlanError: coupled layers carry different keep ratios, or a layer that cannot be pruned
            carries one below 1.
    """
    keeps: dict[int, tuple[float, str]] = {}
    for name, layer_plan in plan.layers.items():
        spec = graph.layers.get(name)
        if spec is None:
            continue
        if spec.group is None or not graph.groups[spec.group].prunable:
            if layer_plan.keep < 1.0:
                why = (
                    graph.groups[spec.group].reason
                    if spec.group is not None
                    else (graph.trace_error or "no coupling group was found for it")
                )
                raise PlanError(
                    f"keep={layer_plan.keep} but this layer cannot be pruned ({why})",
                    layer=name,
                    field="keep",
                )
            continue
        seen = keeps.get(spec.group)
        if seen is not None and seen[0] != layer_plan.keep:
            raise PlanError(
                f"keep={layer_plan.keep} differs from keep={seen[0]} of '{seen[1]}'; "
                "layers coupled "
                f"in group {spec.group} share one keep ratio",
                layer=name,
                field="keep",
            )
        keeps[spec.group] = (layer_plan.keep, name)
    for gid, (keep, source) in keeps.items():
        for member in graph.groups[gid].layers:
            if keep < 1.0 and plan.get(member).keep != keep:
                raise PlanError(
                    f"keep=1.0 (absent) differs from keep={keep} of '{source}'; set the same keep "
                    f"on every layer of coupling group {gid}",
                    layer=member,
                    field="keep",
                )
    return {gid: keep for gid, (keep, _) in keeps.items()}


def pruned_channels(
    spec: LayerSpec, graph: ModelGraph, keeps: Mapping[int, float]
) -> tuple[int, int]:
    """(output channels, input channels) of a layer after pruning with the groups' keep ratios."""
    c_out = spec.out_channels
    if spec.group is not None:
        c_out = kept_channels(c_out, keeps.get(spec.group, 1.0))
    c_in = spec.in_channels
    for tie in spec.inputs:
        group_channels = graph.groups[tie.group].channels
        removed = group_channels - kept_channels(group_channels, keeps.get(tie.group, 1.0))
        c_in -= tie.multiplicity * removed
    return c_out, c_in


def pruned_row_length(spec: LayerSpec, graph: ModelGraph, keeps: Mapping[int, float]) -> int:
    """D = C_in/groups · K² of a layer after pruning: the length a VQ subvector length m divides."""
    c_out, c_in = pruned_channels(spec, graph, keeps)
    groups = c_out if spec.is_depthwise else spec.groups
    return (c_in // groups) * spec.kernel_elems


def validate_plan(plan: Plan, graph: ModelGraph) -> None:
    """Check that `plan` fits the model described by `graph`.

    Raises:
        PlanError: the plan was made for another model, names a layer the model does not have
            (or keeps as is), has an m that does not divide a layer's row length after pruning,
            or gives coupled layers different keep ratios.
    """
    if plan.fingerprint and plan.fingerprint != graph.fingerprint:
        made_for = f" ({plan.model})" if plan.model else ""
        raise PlanError(
            f"the plan was made for another model{made_for}: "
            f"its fingerprint is {plan.fingerprint}, "
            f"{graph.model_name} has {graph.fingerprint}; make a plan for this model "
            "(compplan preset --model ...)",
            field="fingerprint",
        )
    for name in plan.layers:
        if name not in graph.layers:
            try:
                graph.layer(name)
            except KeyError as error:
                raise PlanError(error.args[0], layer=name) from None
    keeps = group_keeps(plan, graph)
    for name, layer_plan in plan.layers.items():
        if layer_plan.m is None:
            continue
        spec = graph.layers[name]
        row = pruned_row_length(spec, graph, keeps)
        if row % layer_plan.m:
            pruned = " after pruning" if row != spec.row_length else ""
            raise PlanError(
                f"m={layer_plan.m} does not divide the row length D={row}{pruned} "
                f"(valid m: {', '.join(str(d) for d in divisors(row) if d <= 64)})",
                layer=name,
                field="m",
            )
