"""The registries of compression units, filled by decorators, read by name.

A plan only loads configs of registered units (the allow-list), and everything that dispatches
on a kind (space, size, proxy, engine, export) looks the unit up here. Registering returns the
class unchanged; `registered(...)` registers for the span of a `with` block (tests).

Weight methods are numbered in registration order from 1 (`weight_method_code`); 0 is a layer
whose weight stays dense. The size predictor's arrays carry these numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields

from search_spaces.errors import PlanError
from search_spaces.methods._base import (
    ActivationConfig,
    ActivationMethod,
    WeightConfig,
    WeightMethod,
)

__all__ = [
    "AUTO_ACTIVATION",
    "COMMON_KNOBS",
    "activation_bits_of",
    "activation_method",
    "activation_method_for",
    "activation_method_of",
    "activation_methods",
    "register_activation_method",
    "register_weight_method",
    "registered",
    "unregister",
    "weight_method",
    "weight_method_code",
    "weight_method_of",
    "weight_methods",
]

# Knobs of every layer (`search_spaces.space.Knobs`); no method's knob may take these names.
COMMON_KNOBS = frozenset({"methods", "act_method", "act_bits", "keep", "lr_mult", "method_knobs"})

_WEIGHT: dict[str, WeightMethod] = {}
_ACTIVATION: dict[str, ActivationMethod] = {}


def register_weight_method(cls: type[WeightMethod]) -> type[WeightMethod]:
    """Class decorator: register the weight method `cls` under `cls.name`.

    Raises:
        ValueError: the name is taken, the config's `method` is not the name, or a knob name
            is a common knob's or another method's.
    """
    name = cls.name
    if name in _WEIGHT or name == "none":
        raise ValueError(f"a weight method named {name!r} is already registered")
    if cls.config_type.method != name:
        raise ValueError(f"{cls.config_type.__name__}.method must be {name!r}")
    own = {f.name for f in fields(cls.knobs_type)}
    taken = set(COMMON_KNOBS)
    for other in _WEIGHT.values():
        taken |= {f.name for f in fields(other.knobs_type)}
    if own & taken:
        raise ValueError(f"{name}: knob names {sorted(own & taken)} are taken")
    _WEIGHT[name] = cls()
    return cls


def register_activation_method(cls: type[ActivationMethod]) -> type[ActivationMethod]:
    """Class decorator: register the activation method `cls` under `cls.name`."""
    if cls.name in _ACTIVATION:
        raise ValueError(f"an activation method named {cls.name!r} is already registered")
    if cls.config_type.method != cls.name:
        raise ValueError(f"{cls.config_type.__name__}.method must be {cls.name!r}")
    _ACTIVATION[cls.name] = cls()
    return cls


def unregister(cls: type[WeightMethod] | type[ActivationMethod]) -> None:
    """Remove a registered unit (a no-op when it is not registered)."""
    registry: dict = _WEIGHT if issubclass(cls, WeightMethod) else _ACTIVATION
    if isinstance(registry.get(cls.name), cls):
        del registry[cls.name]


@contextlib.contextmanager
def registered(cls: type[WeightMethod] | type[ActivationMethod]) -> Iterator[None]:
    """Register `cls` for the span of the block, and remove it afterwards (also on errors)."""
    if issubclass(cls, WeightMethod):
        register_weight_method(cls)
    else:
        register_activation_method(cls)
    try:
        yield
    finally:
        unregister(cls)


def weight_methods() -> tuple[WeightMethod, ...]:
    """Every registered weight method, in registration order."""
    return tuple(_WEIGHT.values())


def weight_method(name: str, *, layer: str | None = None, field: str = "method") -> WeightMethod:
    """The registered weight method `name`.

    Raises:
        PlanError: none is registered under that name (the message lists those that are).
    """
    return _lookup(_WEIGHT, name, "weight", layer=layer, field=field)


def _lookup(registry: dict, name: str, kind: str, *, layer: str | None, field: str):
    try:
        return registry[name]
    except (KeyError, TypeError):
        known = ", ".join(registry) or "none"
        raise PlanError(
            f"{name!r} is not a registered {kind} method (registered: {known})",
            layer=layer,
            field=field,
        ) from None


def weight_method_of(config: WeightConfig) -> WeightMethod:
    """The unit that owns `config`."""
    return weight_method(config.method)


def weight_method_code(name: str) -> int:
    """The method's number in the size predictor's arrays: 1 + its registration index."""
    return 1 + list(_WEIGHT).index(name)


def activation_methods() -> tuple[ActivationMethod, ...]:
    return tuple(_ACTIVATION.values())


def activation_method(name: str, *, layer: str | None = None) -> ActivationMethod:
    """The registered activation method `name` (PlanError when there is none)."""
    return _lookup(_ACTIVATION, name, "activation", layer=layer, field="activations.method")


# The `act_method` knob "auto": per bit-width, the method a CPU runtime runs best: u8 at 8 bits
# (ONNX Runtime's int8 kernels), N2UQ below (nonuniform levels, more accurate at 2 to 4 bits).
AUTO_ACTIVATION = "auto"
_AUTO_METHODS = {8: "uint8"}
_AUTO_BELOW_8 = "n2uq"


def activation_method_for(name: str, bits: int, *, layer: str | None = None) -> ActivationMethod:
    """The activation method an `act_method` knob names for inputs of `bits` bits: itself, or
    for "auto" u8 at 8 bits and N2UQ below (`AUTO_ACTIVATION`)."""
    if name == AUTO_ACTIVATION:
        name = _AUTO_METHODS.get(bits, _AUTO_BELOW_8)
    return activation_method(name, layer=layer)


def activation_bits_of(name: str) -> tuple[int, ...]:
    """The input bit-widths an `act_method` knob offers (below 32)."""
    if name == AUTO_ACTIVATION:
        below = activation_method(_AUTO_BELOW_8).bits
        return tuple(sorted({*below, *_AUTO_METHODS}))
    return tuple(activation_method(name).bits)


def activation_method_of(config: ActivationConfig) -> ActivationMethod:
    return activation_method(config.method)
