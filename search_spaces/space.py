"""`SearchSpace`: the valid choices for every layer of one model, and their Optuna form.

The user describes what the search may pick with `Knobs` (one default for all layers, and
overrides by exact layer name or `re:` pattern, the first match winning). The space resolves them
against the `ModelGraph` into per-layer choices that are all valid for that layer:
- m only takes values that divide the layer's row length for every reachable pruning of its inputs;
- d̃ is given as a fraction of m, so that one static distribution serves every m;
- the keep ratio belongs to a coupling group, not a layer: coupled layers share one parameter, and
  only prunable groups get one.

By default the first conv and the classifier stay at 32 bits (weights and activations), as in every
method this project builds on; pass `protect_ends=False` to search them too.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from search_spaces.graph import LayerSpec, ModelGraph
from search_spaces.knobs import (
    ACT_BITS,
    K_MAX,
    K_MIN,
    LR_MULTS,
    WEIGHT_BITS,
    divisors,
    is_power_of_two,
    kept_channels,
)
from search_spaces.plan import LayerPlan, Plan, PlanError

if TYPE_CHECKING:
    import optuna

__all__ = ["METHODS", "Knobs", "LayerChoices", "SearchSpace"]

METHODS = ("vq", "bits", "none")
_POWERS_OF_TWO = tuple(2**i for i in range(1, 13))


@dataclass(frozen=True)
class Knobs:
    """The values a search may pick for a layer; every field is a tuple of allowed values.

    Attributes:
        methods: weight compression kinds: "vq" (LR²VQ / PQ), "bits" (b-bit weights), "none".
        k: VQ cluster counts, powers of two in 2..4096.
        m: VQ subvector lengths; None means every divisor of the layer's row length up to `max_m`.
        max_m: the largest subvector length considered when `m` is None.
        d_tilde_fractions: d̃ as fractions of m (1.0 is plain PQ); d̃ = max(1, round(f·m)).
        weight_bits: bit-widths for the "bits" method.
        act_bits: input activation bit-widths.
        keep: channel keep ratios, for the layer's coupling group.
        lr_mult: fine-tune learning-rate multipliers (0 freezes).
    """

    methods: tuple[str, ...] = ("vq", "bits")
    k: tuple[int, ...] = _POWERS_OF_TWO
    m: tuple[int, ...] | None = None
    max_m: int = 32
    d_tilde_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    weight_bits: tuple[int, ...] = (1, 2, 3, 4, 8, 16)
    act_bits: tuple[int, ...] = ACT_BITS
    keep: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    lr_mult: tuple[float, ...] = LR_MULTS

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        _check(self.methods, lambda v: v in METHODS, "methods", f"one of {list(METHODS)}")
        _check(
            self.k,
            lambda v: is_power_of_two(v) and K_MIN <= v <= K_MAX,
            "k",
            "powers of two in 2..4096",
        )
        if self.m is not None:
            _check(self.m, lambda v: isinstance(v, int) and v >= 1, "m", "positive integers")
        _check(
            self.d_tilde_fractions, lambda v: 0 < v <= 1, "d_tilde_fractions", "fractions in (0, 1]"
        )
        _check(
            self.weight_bits, lambda v: v in WEIGHT_BITS, "weight_bits", f"in {list(WEIGHT_BITS)}"
        )
        _check(self.act_bits, lambda v: v in ACT_BITS, "act_bits", f"in {list(ACT_BITS)}")
        _check(self.keep, lambda v: 0 < v <= 1, "keep", "ratios in (0, 1]")
        _check(self.lr_mult, lambda v: v >= 0, "lr_mult", "numbers ≥ 0")

    @classmethod
    def uncompressed(cls) -> Knobs:
        """32-bit weights and activations (the default for the first conv and the classifier)."""
        return cls(methods=("none",), act_bits=(32,))


def _check(values: tuple, ok, name: str, what: str) -> None:
    if not values:
        raise PlanError(f"needs at least one value ({what})", field=f"knobs.{name}")
    bad = [v for v in values if not ok(v)]
    if bad:
        raise PlanError(f"{bad} are not {what}", field=f"knobs.{name}")


@dataclass(frozen=True)
class LayerChoices:
    """The resolved, valid choices of one layer (see `Knobs` for the fields)."""

    name: str
    methods: tuple[str, ...]
    k: tuple[int, ...]
    m: tuple[int, ...]
    d_tilde_fractions: tuple[float, ...]
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    lr_mult: tuple[float, ...]
    note: str = ""


class SearchSpace:
    """Per-layer choices for one model, convertible to Optuna distributions.

    Args:
        graph: the model's graph.
        knobs: the default choices for every layer.
        overrides: layer name or "re:<pattern>" → `Knobs`, or a dict of `Knobs` fields to change
            from the default; the first matching key wins.
        protect_ends: keep the first conv and the classifier at 32 bits unless an override
            names them.

    Raises:
        PlanError: an override names no layer, or its fields are invalid.
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
                    rules[end] = Knobs.uncompressed()
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
            return replace(self.knobs, **dict(value))
        except TypeError as error:
            raise PlanError(f"override '{key}': {error}") from None

    def _group_keep_choices(self) -> dict[int, tuple[float, ...]]:
        """Keep ratios per prunable group, largest first: what every member allows, one ratio per
        distinct channel count (two ratios that keep the same channels are one choice)."""
        choices: dict[int, tuple[float, ...]] = {}
        for group in self.graph.groups:
            if not group.prunable:
                continue
            allowed = set.intersection(*(set(self.layer_knobs[n].keep) for n in group.layers))
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
        candidates = (
            knobs.m
            if knobs.m is not None
            else tuple(d for d in divisors(spec.row_length) if d <= knobs.max_m)
        )
        valid_m = tuple(m for m in candidates if all(row % m == 0 for row in rows))
        methods, note = knobs.methods, ""
        if "vq" in methods and not valid_m:
            methods = tuple(x for x in methods if x != "vq") or ("none",)
            note = f"no m in {list(candidates)} divides every reachable row length {sorted(rows)}"
        return LayerChoices(
            name=spec.name,
            methods=methods,
            k=knobs.k,
            m=valid_m,
            d_tilde_fractions=knobs.d_tilde_fractions,
            weight_bits=knobs.weight_bits,
            act_bits=knobs.act_bits,
            lr_mult=knobs.lr_mult,
            note=note,
        )

    # -- Optuna ---------------------------------------------------------------------------------

    def to_optuna(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every parameter of the space as an Optuna distribution, keyed by parameter name.

        Names are "<layer>/<knob>" (method, k, m, d_tilde_fraction, weight_bits, act_bits, lr_mult)
        and "group<id>/keep". Knobs with a single value are constants and have no parameter.
        The space is static (every parameter always exists); `decode` ignores the parameters a
        layer's method does not use, and `suggest` asks only for those it uses.
        """
        return {name: dist for name, dist, _ in self._parameters()}

    def _parameters(self):
        from optuna.distributions import CategoricalDistribution

        for name, c in self.layers.items():
            uses = {
                "method": None,
                "k": "vq",
                "m": "vq",
                "d_tilde_fraction": "vq",
                "weight_bits": "bits",
                "act_bits": None,
                "lr_mult": None,
            }
            values = {
                "method": c.methods,
                "k": c.k,
                "m": c.m,
                "d_tilde_fraction": c.d_tilde_fractions,
                "weight_bits": c.weight_bits,
                "act_bits": c.act_bits,
                "lr_mult": c.lr_mult,
            }
            for knob, method in uses.items():
                if method is not None and method not in c.methods:
                    continue
                if len(values[knob]) > 1:
                    yield f"{name}/{knob}", CategoricalDistribution(values[knob]), method
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

            def pick(knob: str, choices: tuple, layer: str = name) -> Any:
                value = params.get(f"{layer}/{knob}", choices[0] if choices else None)
                if choices and value not in choices:
                    raise PlanError(
                        f"{value!r} is not among {list(choices)}", layer=layer, field=knob
                    )
                return value

            method = pick("method", c.methods)
            spec = self.graph.layers[name]
            keep = keeps.get(spec.group, 1.0) if spec.group is not None else 1.0
            common = {
                "act_bits": pick("act_bits", c.act_bits),
                "lr_mult": pick("lr_mult", c.lr_mult),
                "keep": keep,
            }
            if method == "vq":
                m = pick("m", c.m)
                d = max(1, round(pick("d_tilde_fraction", c.d_tilde_fractions) * m))
                plan = LayerPlan(k=pick("k", c.k), m=m, d_tilde=None if d == m else d, **common)
            elif method == "bits":
                plan = LayerPlan(weight_bits=pick("weight_bits", c.weight_bits), **common)
            else:
                plan = LayerPlan(**common)
            if plan != LayerPlan():
                layers[name] = plan
        return Plan(
            layers=layers,
            model=self.graph.model_name,
            fingerprint=self.graph.fingerprint,
            provenance={"source": "search_space"},
        )

    @property
    def log10_size(self) -> float:
        """log10 of the number of distinct points (methods' own knobs counted per method)."""
        total = 0.0
        for c in self.layers.values():
            per_method = {
                "vq": len(c.k) * len(c.m) * len(c.d_tilde_fractions),
                "bits": len(c.weight_bits),
                "none": 1,
            }
            count = sum(per_method[m] for m in c.methods) * len(c.act_bits) * len(c.lr_mult)
            total += math.log10(max(count, 1))
        return total + sum(math.log10(len(v)) for v in self.group_keep.values())


def _matches(key: str, name: str) -> bool:
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    return key == name
