"""`SearchKnobs`: what a search may choose for every layer, typed, validated and versioned.

It is `SearchConfig.knobs`, the restriction `compplan search --methods/--weight-bits/--act-bits/
--keep/--vq-k/--vq-m` sets; None on a field leaves that knob at its default
(`search_spaces.space.Knobs`). It converts to the `Knobs` every layer but the overridden ones
and the protected ends takes, and is validated on construction by building that `Knobs`:

    knobs = SearchKnobs(methods=("bits",), weight_bits=(2, 4, 8), keep=(1.0,))
    knobs.to_knobs()                                  # Knobs(methods=("bits",), ...)
    SearchKnobs.from_dict(knobs.to_dict()) == knobs   # {"version": 1, ...}, JSON-ready
    SearchKnobs.from_dict({"k": [256], "m": [9]})     # the unversioned form of older studies

The unversioned form is the `Knobs` keyword arguments that `SearchConfig(knobs={...})` took
before (VQ's "k", "m", "max_m", "d_tilde_fractions" under their own names), so studies made by
an older compplan still load and keep their identity (`knobs_kwargs` is what they digest).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from planner.errors import PlannerError
from search_spaces.knobs import K_MAX, K_MIN, is_int, is_number
from search_spaces.methods import AUTO_ACTIVATION, activation_bits_of, weight_methods
from search_spaces.methods.quantizers import WEIGHT_QUANT_BITS
from search_spaces.plan import PlanError
from search_spaces.space import Knobs

__all__ = ["FLAGS", "KNOBS_VERSION", "SearchKnobs", "allowed_values", "parse_flag"]

KNOBS_VERSION = 1

# SearchKnobs field → the `Knobs` keyword it sets (the key of the unversioned form).
_KNOBS_NAMES = {
    "methods": "methods",
    "weight_bits": "weight_bits",
    "act_bits": "act_bits",
    "keep": "keep",
    "vq_k": "k",
    "vq_m": "m",
    "vq_max_m": "max_m",
    "vq_d_tilde_fractions": "d_tilde_fractions",
    "act_method": "act_method",
    "lr_mult": "lr_mult",
}
_FIELD_OF = {knob: name for name, knob in _KNOBS_NAMES.items()}
# The `compplan search` flag of each field that has one.
FLAGS = {
    "methods": "--methods",
    "weight_bits": "--weight-bits",
    "act_bits": "--act-bits",
    "keep": "--keep",
    "vq_k": "--vq-k",
    "vq_m": "--vq-m",
}
_INTS = ("weight_bits", "act_bits", "vq_k", "vq_m")
_NUMBERS = ("keep", "lr_mult", "vq_d_tilde_fractions")
_SCALARS = ("vq_max_m", "act_method")
# Each tuple field's element check, with what its elements are called in a refusal.
_ELEMENTS = (
    {name: (is_int, "integers") for name in _INTS}
    | {name: (is_number, "numbers") for name in _NUMBERS}
    | {"methods": (lambda v: isinstance(v, str), "names")}
)


@dataclass(frozen=True)
class SearchKnobs:
    """The values a search may choose for every layer; None leaves a knob at its default.

    Each tuple field also takes a list or a single value. Layers named by `SearchConfig.overrides`
    and the protected ends take their own knobs instead (the ends keep this `keep`).

    Attributes:
        methods: weight methods, registered names ("bits", "vq") or "none" (dense).
        weight_bits: the bits method's bit-widths (1, 2, 3, 4, 8, 16).
        act_bits: input activation bit-widths (2, 3, 4, 8; 32: unquantized).
        keep: channel keep ratios in (0, 1] of each prunable coupling group.
        vq_k: VQ's cluster counts, powers of two in 2..4096.
        vq_m: VQ's subvector lengths; a layer keeps those that divide its row length (None:
            every divisor up to `vq_max_m`).
        vq_max_m: the largest subvector length when `vq_m` is None.
        vq_d_tilde_fractions: VQ's clustering dimension as fractions of m, in (0, 1].
        act_method: the activation quantizer below 32 bits (a registered name, or "auto").
        lr_mult: fine-tune learning-rate multipliers (0 freezes).
        other: the knobs of other registered weight methods, by their `Knobs` keyword.

    Raises:
        PlannerError: a value is not allowed (one line naming the allowed values), or `other`
            names no method's knob.
    """

    methods: tuple[str, ...] | None = None
    weight_bits: tuple[int, ...] | None = None
    act_bits: tuple[int, ...] | None = None
    keep: tuple[float, ...] | None = None
    vq_k: tuple[int, ...] | None = None
    vq_m: tuple[int, ...] | None = None
    vq_max_m: int | None = None
    vq_d_tilde_fractions: tuple[float, ...] | None = None
    act_method: str | None = None
    lr_mult: tuple[float, ...] | None = None
    other: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _KNOBS_NAMES:
            value = getattr(self, name)
            if value is not None and name not in _SCALARS:
                value = tuple(value) if isinstance(value, list | tuple) else (value,)
                object.__setattr__(self, name, value)
        other = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in dict(self.other).items()
        }
        object.__setattr__(self, "other", other)
        for key in other:
            if key in _FIELD_OF or key in _KNOBS_NAMES:
                name = _FIELD_OF.get(key, key)
                raise PlannerError(f"knob {key}: give it as its own field, {name}=...")
        self._check_types()
        self.to_knobs()

    def _check_types(self) -> None:
        """Refuse values of the wrong type before `Knobs` compares them ("a" < 1 raises)."""
        for name, (ok, what) in _ELEMENTS.items():
            bad = [v for v in getattr(self, name) or () if not ok(v)]
            if bad:
                raise _KnobError(name, f"{bad} are not {what}")
        if self.vq_max_m is not None and not (is_int(self.vq_max_m) and self.vq_max_m >= 1):
            raise PlannerError(f"knob vq_max_m: {self.vq_max_m!r} is not a positive integer")
        if self.act_method is not None and not isinstance(self.act_method, str):
            raise PlannerError(f"knob act_method: {self.act_method!r} is not a name")

    def knobs_kwargs(self) -> dict[str, Any]:
        """The `Knobs` keyword arguments of the fields given (the unversioned form, which the
        study identity digests: {} for no restriction, as before versions)."""
        given = {
            knob: getattr(self, name)
            for name, knob in _KNOBS_NAMES.items()
            if getattr(self, name) is not None
        }
        return given | dict(self.other)

    def to_knobs(self) -> Knobs:
        """The `Knobs` every layer without an override takes.

        Raises:
            PlannerError: a value is not allowed (one line naming the knob and the allowed
                values).
        """
        try:
            return Knobs(**self.knobs_kwargs())
        except PlanError as error:
            why = str(error).removeprefix(f"field '{error.field}': ")
            field_ = error.field or ""
            # A method's knobs name themselves "knobs.<keyword>"; only act_method's do not.
            knob = field_.removeprefix("knobs.") if field_.startswith("knobs.") else "act_method"
            raise _KnobError(_FIELD_OF.get(knob, knob), why) from None

    def resolved(self) -> dict[str, Any]:
        """Every knob's values as the search uses them, defaults filled in, JSON-ready (VQ's
        `vq_m` None: every divisor of a layer's row length up to `vq_max_m`)."""
        knobs = self.to_knobs()
        out: dict[str, Any] = {
            "methods": knobs.methods,
            "act_method": knobs.act_method,
            "act_bits": knobs.act_bits,
            "keep": knobs.keep,
            "lr_mult": knobs.lr_mult,
        }
        for _, method_knobs in knobs.method_knobs:
            for f in fields(method_knobs):
                out[_FIELD_OF.get(f.name, f.name)] = getattr(method_knobs, f.name)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    # -- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document with its version; None fields are at their defaults."""
        data: dict[str, Any] = {"version": KNOBS_VERSION}
        for name in _KNOBS_NAMES:
            value = getattr(self, name)
            data[name] = list(value) if isinstance(value, tuple) else value
        data["other"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.other.items()}
        return data

    @classmethod
    def from_dict(cls, data: object) -> SearchKnobs:
        """The knobs a `to_dict()` document describes, or the unversioned form: `Knobs`
        keyword arguments (and field names), as older studies and `SearchConfig(knobs={...})`
        hold them.

        Raises:
            PlannerError: not a mapping, another version, an unknown field, a bad value.
        """
        if not isinstance(data, Mapping):
            raise PlannerError(f"search knobs must be a mapping of knob → values, not {data!r}")
        if "version" not in data:
            return cls._from_unversioned(data)
        if data["version"] != KNOBS_VERSION:
            raise PlannerError(
                f"search knobs version {data['version']!r} is not supported (this compplan reads "
                f"version {KNOBS_VERSION}); recreate the study with this compplan"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - {*known, "version"})
        if unknown:
            raise PlannerError(
                f"search knobs: unknown fields {', '.join(unknown)}; knobs are {', '.join(known)}"
            )
        values = {k: v for k, v in data.items() if k != "version"}
        values["other"] = values.get("other") or {}
        return cls(**values)

    @classmethod
    def _from_unversioned(cls, data: Mapping[str, Any]) -> SearchKnobs:
        values: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        other: dict[str, Any] = {}
        for key, value in data.items():
            name = key if key in _KNOBS_NAMES else _FIELD_OF.get(key)
            if name is None:  # another registered method's knob: `Knobs` refuses a wrong one
                other[key] = value
            elif name in values:
                raise PlannerError(
                    f"search knobs: {given_as[name]} and {key} both set knob {name}; give one"
                )
            else:
                values[name], given_as[name] = value, key
        return cls(**values, other=other)


class _KnobError(PlannerError):
    """A value knob `name` does not allow; `why` says so without naming it (argparse names
    the flag)."""

    def __init__(self, name: str, why: str):
        flag = f" ({FLAGS[name]})" if name in FLAGS else ""
        super().__init__(f"knob {name}{flag}: {why}")
        self.why = why


def parse_flag(name: str, text: str) -> tuple:
    """The values of a comma-separated `compplan search` flag of field `name` ("2,4,8"),
    checked as `SearchKnobs` checks them.

    Raises:
        PlannerError: no values, or one that is not allowed (the message names the allowed
            ones, without the flag: argparse names it).
    """
    items = [item.strip() for item in text.split(",")]
    allowed = allowed_values(name)
    if not all(items):
        raise PlannerError(f"'{text}' holds an empty value: give comma-separated {allowed}")
    convert = int if name in _INTS else float if name in _NUMBERS else str
    try:
        values = tuple(convert(item) for item in items)
    except ValueError:
        raise PlannerError(f"'{text}' is not a comma-separated list of {allowed}") from None
    try:
        SearchKnobs(**{name: values})
    except _KnobError as error:
        raise PlannerError(error.why) from None
    return values


def allowed_values(name: str) -> str:
    """What field `name`'s flag allows, in words ("bit-widths from 1, 2, 3, 4, 8, 16")."""

    def listed(values) -> str:
        return ", ".join(str(v) for v in values)

    what = {
        "methods": f"names from {listed([*(u.name for u in weight_methods()), 'none'])}",
        "weight_bits": f"bit-widths from {listed(WEIGHT_QUANT_BITS)}",
        "act_bits": f"bit-widths from {listed([*activation_bits_of(AUTO_ACTIVATION), 32])}",
        "keep": "ratios in (0, 1]",
        "vq_k": f"powers of two in {K_MIN}..{K_MAX}",
        "vq_m": "positive integers",
    }
    return what.get(name, "values")
