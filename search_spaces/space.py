"""`SearchSpace`: the valid choices for every layer of one model, and their Optuna form.

The user describes what the search may pick with `Knobs` (one default for all layers, and
overrides by exact layer name or `re:` pattern, the first match winning). The space resolves them
against the `ModelGraph` into per-layer choices that are all valid for that layer:
- each weight method narrows its own knobs (`WeightMethod.resolve`): VQ's m only takes values
  that divide the layer's row length for every reachable pruning of its inputs, and d̃ is given
  as a fraction of m, so that one static distribution serves every m;
- the keep ratio belongs to a coupling group, not a layer: coupled layers share one parameter, and
  only prunable groups get one.

By default the first conv and the classifier stay at 32 bits (weights and activations), as in every
method this project builds on; pass `protect_ends=False` to search them too.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from search_spaces.graph import LayerSpec, ModelGraph
from search_spaces.knobs import ACT_BITS, LR_MULTS, kept_channels
from search_spaces.methods import (
    AUTO_ACTIVATION,
    activation_bits_of,
    activation_method_for,
    check_knob,
    weight_method,
    weight_methods,
)
from search_spaces.plan import LayerPlan, Plan, PlanError

if TYPE_CHECKING:
    import optuna

__all__ = ["Knobs", "LayerChoices", "SearchSpace"]

_COMMON = ("methods", "act_method", "act_bits", "keep", "lr_mult")


@dataclass(frozen=True, init=False)
class Knobs:
    """The values a search may pick for a layer; every knob is a tuple of allowed values.

    The common knobs are fields; each weight method's own knobs (VQ's `k`, `m`, `max_m`,
    `d_tilde_fractions`, b-bit's `weight_bits`, a new method's) are keyword arguments too, and
    go to that method's knobs dataclass (`WeightMethod.knobs_type`); a method not given any takes
    its defaults. `Knobs(methods=("vq",), k=(256,), m=(9, 18))`.

    Attributes:
        methods: weight methods (registered names) or "none" (dense).
        act_method: the activation quantizer (a registered name) for act_bits below 32, or
            "auto" (default): u8 at 8 bits (ONNX Runtime's int8 kernels), N2UQ below.
        act_bits: input activation bit-widths (32: none).
        keep: channel keep ratios, for the layer's coupling group.
        lr_mult: fine-tune learning-rate multipliers (0 freezes).
        method_knobs: (method name, its knobs) for every registered method, in registry order.

    Raises:
        PlanError: a value is invalid (field "knobs.<name>"), or a keyword is no method's knob.
    """

    methods: tuple[str, ...]
    act_method: str
    act_bits: tuple[int, ...]
    keep: tuple[float, ...]
    lr_mult: tuple[float, ...]
    method_knobs: tuple[tuple[str, Any], ...]

    def __init__(
        self,
        *,
        methods: tuple[str, ...] = ("vq", "bits"),
        act_method: str = AUTO_ACTIVATION,
        act_bits: tuple[int, ...] = ACT_BITS,
        keep: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        lr_mult: tuple[float, ...] = LR_MULTS,
        method_knobs: Mapping[str, Any] | tuple[tuple[str, Any], ...] = (),
        **knobs: Any,
    ):
        given = dict(method_knobs)
        changes: dict[str, dict[str, Any]] = {}
        owners = {f.name: unit.name for unit in weight_methods() for f in fields(unit.knobs_type)}
        for key, value in knobs.items():
            if key not in owners:
                known = ", ".join([*_COMMON, *owners])
                raise PlanError(
                    f"unexpected keyword '{key}'; knobs are {known}", field=f"knobs.{key}"
                )
            changes.setdefault(owners[key], {})[key] = value
        resolved = []
        for unit in weight_methods():
            base = given.get(unit.name)
            values = (
                {f.name: getattr(base, f.name) for f in fields(unit.knobs_type)} if base else {}
            )
            values |= changes.get(unit.name, {})
            resolved.append((unit.name, unit.knobs_type(**values)))
        for name, value in [
            ("methods", methods),
            ("act_bits", act_bits),
            ("keep", keep),
            ("lr_mult", lr_mult),
            ("method_knobs", tuple(resolved)),
        ]:
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)
        object.__setattr__(self, "act_method", act_method)
        names = {unit.name for unit in weight_methods()}
        check_knob(
            self.methods,
            lambda v: v in names or v == "none",
            "methods",
            f"registered weight methods {sorted(names)} or 'none'",
        )
        allowed = (*activation_bits_of(act_method), 32)
        check_knob(self.act_bits, lambda v: v in allowed, "act_bits", f"in {list(allowed)}")
        check_knob(self.keep, lambda v: 0 < v <= 1, "keep", "ratios in (0, 1]")
        check_knob(self.lr_mult, lambda v: v >= 0, "lr_mult", "numbers ≥ 0")

    def of(self, method: str) -> Any:
        """The knobs of weight method `method`."""
        return dict(self.method_knobs)[method]

    def changed(self, **changes: Any) -> Knobs:
        """These knobs with some values changed (common knobs or any method's)."""
        common = {name: getattr(self, name) for name in _COMMON}
        return Knobs(**(common | {"method_knobs": self.method_knobs} | changes))

    @classmethod
    def uncompressed(cls) -> Knobs:
        """32-bit weights and activations (the default for the first conv and the classifier)."""
        return cls(methods=("none",), act_bits=(32,))


@dataclass(frozen=True)
class LayerChoices:
    """The resolved, valid choices of one layer (see `Knobs` for the fields).

    `method_knobs` holds, for each method in `methods` (but "none"), its knobs narrowed to what
    is valid for this layer (`WeightMethod.resolve`); `note` says why a method was dropped."""

    name: str
    methods: tuple[str, ...]
    method_knobs: tuple[tuple[str, Any], ...]
    act_method: str
    act_bits: tuple[int, ...]
    lr_mult: tuple[float, ...]
    note: str = ""

    def of(self, method: str) -> Any:
        """The resolved knobs of weight method `method`."""
        return dict(self.method_knobs)[method]

    def parameters(self) -> dict[str, tuple[str, tuple]]:
        """Every search parameter of this layer: knob → (the method using it or "", choices)."""
        params: dict[str, tuple[str, tuple]] = {"method": ("", self.methods)}
        for method, knobs in self.method_knobs:
            for knob, choices in weight_method(method).parameters(knobs).items():
                params[knob] = (method, choices)
        params["act_bits"] = ("", self.act_bits)
        params["lr_mult"] = ("", self.lr_mult)
        return params

    def layer_plan(self, values: Mapping[str, Any], *, keep: float) -> LayerPlan:
        """The layer plan of one value per parameter (missing ones: the first choice).

        Raises:
            PlanError: a value is not among its parameter's choices.
        """
        params = self.parameters()

        def pick(knob: str) -> Any:
            choices = params[knob][1]
            value = values.get(knob, choices[0])
            if value not in choices:
                raise PlanError(
                    f"{value!r} is not among {list(choices)}", layer=self.name, field=knob
                )
            return value

        method = pick("method")
        weights = None
        if method != "none":
            unit = weight_method(method)
            weights = unit.decode({k: pick(k) for k in unit.parameters(self.of(method))})
        return LayerPlan(
            weights=weights,
            activations=activation_method_for(self.act_method, pick("act_bits")).config(
                pick("act_bits")
            ),
            keep=keep,
            lr_mult=pick("lr_mult"),
        )


class SearchSpace:
    """Per-layer choices for one model, convertible to Optuna distributions.

    Args:
        graph: the model's graph.
        knobs: the default choices for every layer.
        overrides: layer name or "re:<pattern>" → `Knobs`, or a dict of `Knobs` fields to change
            from the default; the first matching key wins.
        protect_ends: keep the first conv and the classifier at 32 bits unless an override
            names them (their channels take the default knobs' keep ratios).

    Raises:
        PlanError: an override names no layer, or its fields are invalid; the default knobs
            leave a layer no weight method (an override may: that layer stays dense, with a
            note); coupled layers' knobs share no keep ratio.
    """

    def __init__(
        self,
        graph: ModelGraph,
        knobs: Knobs | None = None,
        *,
        overrides: Mapping[str, Knobs | Mapping[str, Any]] | None = None,
        protect_ends: bool = True,
    ):
        self.graph = graph
        self.knobs = knobs or Knobs()
        rules: dict[str, Knobs | Mapping[str, Any]] = dict(overrides or {})
        if protect_ends:
            for end in (graph.first_conv, graph.classifier):
                if end is not None and not any(_matches(key, end) for key in rules):
                    # Its group's keep is the other members' too: --keep 0.6 must still apply.
                    rules[end] = Knobs.uncompressed().changed(keep=self.knobs.keep)
        resolved = {key: self._knobs_of(key, value) for key, value in rules.items()}
        for key in resolved:
            if not any(_matches(key, name) for name in graph.layers):
                raise PlanError(
                    f"override '{key}' matches no compressible layer of {graph.model_name} "
                    "(run `compplan inspect` for the names; patterns start with 're:')"
                )
        self.layer_knobs = {
            name: next((k for key, k in resolved.items() if _matches(key, name)), self.knobs)
            for name in graph.layers
        }
        self.group_keep = self._group_keep_choices()
        self.layers = {name: self._choices(spec) for name, spec in graph.layers.items()}

    def _knobs_of(self, key: str, value: Knobs | Mapping[str, Any]) -> Knobs:
        if isinstance(value, Knobs):
            return value
        try:
            return self.knobs.changed(**dict(value))
        except PlanError as error:
            raise PlanError(f"override '{key}': {error}") from None

    def _group_keep_choices(self) -> dict[int, tuple[float, ...]]:
        """Keep ratios per prunable group, largest first: what every member allows, one ratio per
        distinct channel count (two ratios that keep the same channels are one choice)."""
        choices: dict[int, tuple[float, ...]] = {}
        for group in self.graph.groups:
            if not group.prunable:
                continue
            allowed = set.intersection(*(set(self.layer_knobs[n].keep) for n in group.layers))
            if not allowed:
                keeps = "; ".join(f"{n}: {list(self.layer_knobs[n].keep)}" for n in group.layers)
                raise PlanError(
                    f"layers {', '.join(group.layers)} share their channels (coupling group "
                    f"{group.id}), but their knobs allow no keep ratio in common ({keeps}): "
                    "give them one"
                )
            by_count = {kept_channels(group.channels, r): r for r in sorted(allowed)}
            choices[group.id] = tuple(sorted(by_count.values(), reverse=True))
        return choices

    def _row_lengths(self, spec: LayerSpec) -> set[int]:
        """Every row length D the layer can have, over all keep choices of its input groups."""
        if spec.is_depthwise:
            return {spec.kernel_elems}
        options = []
        for tie in spec.inputs:
            group = self.graph.groups[tie.group]
            counts = {
                kept_channels(group.channels, r) for r in self.group_keep.get(group.id, (1.0,))
            }
            options.append({tie.multiplicity * (group.channels - c) for c in counts})
        rows = set()
        for removed in itertools.islice(itertools.product(*options), 4096):
            c_in = spec.in_channels - sum(removed)
            rows.add(c_in // spec.groups * spec.kernel_elems)
        return rows

    def _choices(self, spec: LayerSpec) -> LayerChoices:
        knobs = self.layer_knobs[spec.name]
        rows = self._row_lengths(spec)
        methods, method_knobs, notes = [], [], []
        for method in knobs.methods:
            if method == "none":
                methods.append(method)
                continue
            narrowed, why = weight_method(method).resolve(knobs.of(method), spec, rows)
            if narrowed is None:
                notes.append(f"{method}: {why}")
                continue
            methods.append(method)
            method_knobs.append((method, narrowed))
        if not methods and knobs is self.knobs:
            # An override's pattern may catch layers a method does not fit; a restriction of
            # every layer that leaves one nothing is a mistake worth a refusal.
            raise PlanError(
                f"the knobs leave it no weight method ({'; '.join(notes)}): allow values that "
                "fit it (--vq-m), another method (--methods), or none among the methods to "
                "leave such layers dense",
                layer=spec.name,
            )
        act_bits = knobs.act_bits
        if not spec.quantizable_inputs and act_bits != (32,):
            act_bits = (32,)
            notes.append("32-bit inputs only: a Transformer layer's fast path skips quantizers")
        return LayerChoices(
            name=spec.name,
            methods=tuple(methods) or ("none",),
            method_knobs=tuple(method_knobs),
            act_method=knobs.act_method,
            act_bits=act_bits,
            lr_mult=knobs.lr_mult,
            note="; ".join(notes),
        )

    # -- Optuna ---------------------------------------------------------------------------------

    def to_optuna(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every parameter of the space as an Optuna distribution, keyed by parameter name.

        Names are "<layer>/<knob>": "method", each method's own parameters (VQ: k, m,
        d_tilde_fraction; b-bit: weight_bits), act_bits, lr_mult; and "group<id>/keep". Knobs
        with a single value are constants and have no parameter. The space is static (every
        parameter always exists); `decode` ignores the parameters a layer's method does not
        use, and `suggest` asks only for those it uses.
        """
        return {name: dist for name, dist, _ in self._parameters()}

    def _parameters(self):
        from optuna.distributions import CategoricalDistribution

        for name, c in self.layers.items():
            for knob, (method, choices) in c.parameters().items():
                if len(choices) > 1:
                    yield f"{name}/{knob}", CategoricalDistribution(choices), method or None
        for gid, choices in self.group_keep.items():
            if len(choices) > 1:
                yield f"group{gid}/keep", CategoricalDistribution(choices), None

    def suggest(self, trial: optuna.Trial) -> Plan:
        """Ask `trial` for this space's parameters (only those the chosen methods use) → a Plan."""
        params: dict[str, Any] = {}
        for name, dist, method in self._parameters():
            if method is not None:
                layer = name.rsplit("/", 1)[0]
                chosen = params.get(f"{layer}/method", self.layers[layer].methods[0])
                if chosen != method:
                    continue
            params[name] = trial.suggest_categorical(name, dist.choices)
        return self.decode(params)

    def decode(self, params: Mapping[str, Any]) -> Plan:
        """The plan that a set of parameter values stands for.

        Missing parameters take the knob's first value, so a partial dict works too.

        Raises:
            PlanError: a value is not among the layer's choices.
        """
        keeps = {gid: params.get(f"group{gid}/keep", c[0]) for gid, c in self.group_keep.items()}
        layers: dict[str, LayerPlan] = {}
        for name, c in self.layers.items():
            spec = self.graph.layers[name]
            keep = keeps.get(spec.group, 1.0) if spec.group is not None else 1.0
            prefix = f"{name}/"
            values = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
            plan = c.layer_plan(values, keep=keep)
            if plan != LayerPlan():
                layers[name] = plan
        return Plan(
            layers=layers,
            model=self.graph.model_name,
            fingerprint=self.graph.fingerprint,
            provenance={"source": "search_space"},
        )


def _matches(key: str, name: str) -> bool:
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    return key == name
