"""`Plan`: what to do to each layer, as one versioned, validated JSON document.

A plan is the hand-off between the planner and the engine. It maps fully qualified layer names to
frozen `LayerPlan`s, in order; a layer that is absent stays as it is. It carries the budgets it was
planned for, the fingerprint of the model it was planned on, and where it came from.

A layer plan holds a typed weight config and a typed activation config, each owned by a
registered compression unit (`search_spaces.methods`); a plan only loads configs of registered
units. Schema 2 (written) names the unit:

    "layer1.0.conv1": {"weights": {"method": "vq", "k": 256, "m": 9},
                       "activations": {"method": "n2uq", "bits": 4}, "keep": 0.5}

Schema 1 (still read) had flat knobs: `{"k": 256, "m": 9, "d_tilde": 4, "weight_bits": 2,
"act_bits": 4, ...}`; `LayerPlan.from_dict(..., version=1)` converts them.

Two levels of checking:
- `LayerPlan.__post_init__`, the configs' own checks and `Plan.from_dict` check what a plan says on
  its own (types, ranges, registered methods);
- `validate_plan(plan, graph)` checks it against a model (layer names, each weight config against
  the layer's row length after pruning, one keep ratio per coupling group, the fingerprint).
Every error is a `PlanError` whose message names the layer and the field.

The plan types live here, below the planner, because the size predictor and the engine read plans
too and must not import the planner.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from search_spaces.errors import PlanError
from search_spaces.knobs import ACT_BITS, WEIGHT_BITS, is_int, is_number, kept_channels
from search_spaces.methods import (
    DEFAULT_ACTIVATION_METHOD,
    ActivationConfig,
    BitsConfig,
    VQConfig,
    WeightConfig,
    activation_method,
    weight_method,
)
from search_spaces.output_file import write_text_atomically

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
SCHEMA_VERSION = 2
_V1_KNOBS = ("k", "m", "d_tilde", "weight_bits", "act_bits", "keep", "lr_mult")


@dataclass(frozen=True)
class LayerPlan:
    """What to do to one layer. The defaults leave it as it is.

    Attributes:
        weights: the weight method's config (`VQConfig`, `BitsConfig`, ... of a registered
            unit), or None for a dense 32-bit weight.
        activations: the input activation quantizer's config, or None for 32-bit inputs.
        keep: output-channel keep ratio in (0, 1]; equal across a coupling group.
        lr_mult: fine-tune learning-rate multiplier ≥ 0; 0 freezes the layer.
    """

    weights: WeightConfig | None = None
    activations: ActivationConfig | None = None
    keep: float = 1.0
    lr_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.weights is not None:
            if not isinstance(self.weights, WeightConfig):
                raise PlanError(
                    f"expected a weight config, got {type(self.weights).__name__}", field="weights"
                )
            unit = weight_method(self.weights.method, field="weights.method")
            if not isinstance(self.weights, unit.config_type):
                raise PlanError(
                    f"{type(self.weights).__name__} is not the registered {unit.name} config",
                    field="weights",
                )
        if self.activations is not None:
            if not isinstance(self.activations, ActivationConfig):
                raise PlanError(
                    f"expected an activation config, got {type(self.activations).__name__}",
                    field="activations",
                )
            activation_method(self.activations.method)
        if not is_number(self.keep) or not 0.0 < self.keep <= 1.0:
            raise PlanError(f"keep={self.keep!r} is outside (0, 1]", field="keep")
        if not is_number(self.lr_mult) or self.lr_mult < 0:
            raise PlanError(f"lr_mult={self.lr_mult!r} must be a number ≥ 0", field="lr_mult")

    @property
    def method(self) -> str:
        """The weight method's name, or "none" for a dense weight."""
        return "none" if self.weights is None else self.weights.method

    @property
    def act_bits(self) -> int:
        """Input activation bits: 32 without an activation quantizer."""
        return 32 if self.activations is None else self.activations.bits

    def to_dict(self) -> dict[str, Any]:
        """Schema 2: only what differs from the defaults, so plan files stay short."""
        data: dict[str, Any] = {}
        if self.weights is not None:
            data["weights"] = self.weights.to_dict()
        if self.activations is not None:
            data["activations"] = self.activations.to_dict()
        for name in ("keep", "lr_mult"):
            if getattr(self, name) != getattr(_UNCHANGED, name):
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(
        cls, data: object, *, layer: str | None = None, version: int = SCHEMA_VERSION
    ) -> LayerPlan:
        """A layer plan from its JSON object in schema `version` (1 or 2).

        Raises:
            PlanError: naming `layer` and the field ("weights.k" in schema 2, "k" in schema 1).
        """
        if not isinstance(data, dict):
            raise PlanError(
                f"expected a JSON object of knobs, got {type(data).__name__}", layer=layer
            )
        known = list(_V1_KNOBS) if version == 1 else [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise PlanError(
                    f"unknown knob{hint}; knobs are {', '.join(known)}", layer=layer, field=str(key)
                )
        try:
            if version == 1:
                return _from_v1(data)
            return cls(
                weights=_config(data.get("weights"), "weights"),
                activations=_config(data.get("activations"), "activations"),
                **{k: data[k] for k in ("keep", "lr_mult") if k in data},
            )
        except PlanError as error:
            raise PlanError(str(error).split(": ", 1)[-1], layer=layer, field=error.field) from None


def _config(data: object, part: str) -> Any:
    """The weight or activation config of a schema-2 object (None when absent)."""
    if data is None:
        return None
    if not isinstance(data, dict) or "method" not in data:
        raise PlanError('must be a JSON object with a "method"', field=part)
    settings = {k: v for k, v in data.items() if k != "method"}
    if part == "weights":
        config_type = weight_method(data["method"], field="weights.method").config_type
    else:
        config_type = activation_method(data["method"]).config_type
    try:
        return config_type.from_dict(settings)
    except PlanError as error:
        raise PlanError(str(error).split(": ", 1)[-1], field=f"{part}.{error.field}") from None


def _from_v1(data: Mapping[str, Any]) -> LayerPlan:
    """Schema 1's flat knobs → a layer plan (errors name the flat knob)."""
    k, m, d_tilde, weight_bits = (data.get(n) for n in ("k", "m", "d_tilde", "weight_bits"))
    act_bits = data.get("act_bits", 32)
    if (k is None) != (m is None):
        raise PlanError("vector quantization needs both k and m", field="m" if m is None else "k")
    if d_tilde is not None and m is None:
        raise PlanError("d_tilde is set without vector quantization (k, m)", field="d_tilde")
    weights: WeightConfig | None = None
    if weight_bits is not None:
        if k is not None:
            raise PlanError(
                "VQ (k, m) and weight_bits are both set; a layer takes one of them",
                field="weight_bits",
            )
        if not is_int(weight_bits) or weight_bits not in WEIGHT_BITS:
            raise PlanError(
                f"weight_bits={weight_bits!r} is not one of {list(WEIGHT_BITS)}",
                field="weight_bits",
            )
        weights = BitsConfig(bits=weight_bits) if weight_bits < 32 else None
    elif k is not None:
        weights = VQConfig(k=k, m=m, d_tilde=d_tilde)
    if not is_int(act_bits) or act_bits not in ACT_BITS:
        raise PlanError(f"act_bits={act_bits!r} is not one of {list(ACT_BITS)}", field="act_bits")
    return LayerPlan(
        weights=weights,
        activations=activation_method(DEFAULT_ACTIVATION_METHOD).config(act_bits),
        **{name: data[name] for name in ("keep", "lr_mult") if name in data},
    )


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
            if value is not None and (not is_number(value) or value <= 0):
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
        """Write the plan as JSON, atomically (`search_spaces.output_file`).

        Raises:
            OutputFileError: the path is a directory, a device, a link, in a missing folder,
                or the write failed (the old file is then unchanged).
        """
        write_text_atomically(path, self.to_json(), "the plan file")

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
        if not is_int(version) or version < 1:
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
            layers={
                name: LayerPlan.from_dict(knobs, layer=name, version=version)
                for name, knobs in layers.items()
            },
            model=data.get("model", ""),
            fingerprint=data.get("fingerprint", ""),
            budget=Budget(**budget),
            provenance=provenance,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """The plan a JSON text holds (within `search_spaces.input_file`'s limits)."""
        from search_spaces.input_file import InputFileError, parse_json

        try:
            data = parse_json(text, object_pairs_hook=_refuse_duplicate_keys)
        except InputFileError as error:
            raise PlanError(str(error)) from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan file. Raises PlanError naming the file for anything wrong with it."""
        from search_spaces.input_file import InputFileError, read_json

        try:
            data = read_json(path, "plan file", object_pairs_hook=_refuse_duplicate_keys)
            return cls.from_dict(data)
        except InputFileError as error:
            raise PlanError(str(error)) from None
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
            (or keeps as is), has a weight config that does not fit a layer after pruning (an
            m that does not divide the row length), or gives coupled layers different keep
            ratios.
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
        if layer_plan.weights is None:
            continue
        spec = graph.layers[name]
        row = pruned_row_length(spec, graph, keeps)
        weight_method(layer_plan.method).check(
            layer_plan.weights, row_length=row, layer=name, pruned=row != spec.row_length
        )
