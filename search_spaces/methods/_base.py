"""The two kinds of compression unit and their contracts: `WeightMethod`, `ActivationMethod`.

A compression kind is one unit: one class in one module, registered by name
(`register_weight_method`, `register_activation_method`). The unit owns everything that is
particular to the kind, so the plan, the search space, the size predictor, the proxy, the engine
and the exporter stay generic and never name a kind:

- its typed plan config (a frozen `WeightConfig` / `ActivationConfig` subclass, validated in
  `__post_init__`, each error a `PlanError` naming the field), with JSON to and from it;
- its search knobs (a frozen dataclass of tuples) and the candidates they stand for;
- its exact size, vectorised over plans × layers;
- its proxy error;
- the module that `apply_plan_` puts in place, its frozen (deployed) form, and export and load.

Call order for a weight method, as the rest of compplan calls it:

1. planning: `resolve(knobs, spec, rows)` once per layer, then `parameters` / `candidates` /
   `decode` as often as the search asks;
2. checking a plan: `check(config, row_length=...)` per planned layer, after pruning;
3. sizing: `to_columns(config)` once per (plan, layer), then `bits` and `facts` over a whole
   batch of plans (arrays of the layers that take this method only);
4. proxy: `proxy_errors(weight, configs)` once per layer, over all its candidates at once;
5. apply: `build(weight, config, settings)` → a weight source (an `nn.Module` whose `forward()`
   takes no argument and returns the weight); fine-tuning trains its parameters (those under a
   submodule named `quantizer` at the quantizers' lower rate);
6. export: `frozen(source)` → the deployed source (same outputs, nothing left to train), then
   `export_tensors(frozen)` → the payload tensors and the JSON facts that `load_source` needs to
   rebuild it; the payload's bytes are what `bits` predicted, up to padding each bit-packed tensor
   to whole bytes.

An activation method is the same, smaller: `config(bits)`, `proxy_error(bits)`,
`build(config, inputs)` (calibrated), `skeleton(config)` (its state is loaded afterwards),
`deployed(module)` (a form whose cost does not depend on the data); a unit whose quantizer is
ONNX's QuantizeLinear says so (`int8_kernel`).
"""

from __future__ import annotations

import abc
import difflib
import itertools
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from search_spaces.errors import PlanError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from search_spaces.graph import LayerSpec

__all__ = [
    "ActivationConfig",
    "ActivationMethod",
    "BuildSettings",
    "WeightConfig",
    "WeightMethod",
    "WeightShapes",
    "check_knob",
]


class _Config:
    """JSON for a frozen config dataclass: `{"method": <name>, <field>: <value>, ...}`."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The method's name and every field that is not None."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return {"method": self.method, **{k: v for k, v in values.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """The config of `data` (without its "method" key).

        Raises:
            PlanError: a key is not a field of this config (the message suggests the closest
                one), a required one is missing, or a value is invalid; `field` names the key.
        """
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise PlanError(
                    f"unknown {cls.method} setting{hint}; settings are {', '.join(known)}",
                    field=str(key),
                )
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in data and f.default is MISSING and f.default_factory is MISSING:
                raise PlanError(f"{cls.method} needs a value for {f.name}", field=f.name)
        return cls(**data)


class WeightConfig(_Config):
    """Base of a weight method's plan config: a frozen dataclass; `method` is the unit's name."""


class ActivationConfig(_Config):
    """Base of an activation method's plan config; every one has its input bit-width `bits`."""

    bits: int


def check_knob(values: tuple, ok: Callable[[Any], bool], name: str, what: str) -> None:
    """Raise a PlanError naming `knobs.<name>` unless `values` is non-empty and all `ok`."""
    if not values:
        raise PlanError(f"needs at least one value ({what})", field=f"knobs.{name}")
    bad = [v for v in values if not ok(v)]
    if bad:
        raise PlanError(f"{bad} are not {what}", field=f"knobs.{name}")


@dataclass(frozen=True)
class WeightShapes:
    """Pruned weight shapes, one entry per (plan, layer) of a batch that takes one method.

    Attributes:
        out_channels: C_out after pruning.
        row_length: D = C_in/groups · K² after pruning.
    """

    out_channels: np.ndarray
    row_length: np.ndarray

    @property
    def elements(self) -> np.ndarray:
        """N = C_out · D."""
        return self.out_channels * self.row_length


@dataclass(frozen=True)
class BuildSettings:
    """How hard `build` may work: a seed, and effort settings a unit reads by name.

    Attributes:
        seed: seeds whatever the unit draws (k-means++, say).
        options: effort settings by name ("kmeans_iterations", "anneal" for VQ); a unit takes
            its own defaults for the ones missing.
    """

    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)


class WeightMethod(abc.ABC):
    """One weight-compression kind, end to end (see the module docstring for the call order).

    Subclasses set `name`, `config_type`, `knobs_type` and `columns`, implement the abstract
    methods, and are registered with `@register_weight_method`. Registration makes one instance;
    units keep no state of their own.

    Attributes:
        name: the method's name in plans, spaces and exported files ("vq", "bits").
        config_type: the plan config class; its `method` is `name`.
        knobs_type: the search knobs, a frozen dataclass whose fields are tuples of allowed
            values and whose defaults are the default search. Field names are unique across
            all registered methods (a space's overrides name knobs without their method).
        columns: the integer columns `to_columns` gives, in the size predictor's arrays.
    """

    name: ClassVar[str]
    config_type: ClassVar[type[WeightConfig]]
    knobs_type: ClassVar[type]
    columns: ClassVar[tuple[str, ...]]

    # -- the search ---------------------------------------------------------------------------

    def resolve(self, knobs: Any, spec: LayerSpec, rows: Set[int]) -> tuple[Any | None, str]:
        """The knobs narrowed to what is valid for a layer whose row length D may be any of
        `rows` (every pruning of its inputs): (knobs, "") or (None, why the method cannot apply).
        By default every value is valid."""
        return knobs, ""

    @abc.abstractmethod
    def parameters(self, knobs: Any) -> dict[str, tuple]:
        """The search parameters of resolved `knobs`: parameter name → its choices, in order.

        Names are unique across methods (they become "<layer>/<name>" in a study)."""

    @abc.abstractmethod
    def decode(self, values: Mapping[str, Any]) -> WeightConfig:
        """The config that one value per parameter (as `parameters` names them) stands for."""

    def candidates(self, knobs: Any) -> list[WeightConfig]:
        """Every distinct config of resolved `knobs`; by default every combination of
        `parameters`, in order."""
        params = self.parameters(knobs)
        configs = (
            self.decode(dict(zip(params, values, strict=True)))
            for values in itertools.product(*params.values())
        )
        return list(dict.fromkeys(configs))

    def label(self, config: WeightConfig) -> str:
        """A short readable name of `config` ("bits 4")."""
        values = config.to_dict()
        values.pop("method")
        return " ".join([self.name, *(f"{k}={v}" for k, v in values.items())])

    # -- the plan -----------------------------------------------------------------------------

    def check(  # noqa: B027 (optional hook)
        self, config: WeightConfig, *, row_length: int, layer: str, pruned: bool = False
    ) -> None:
        """Raise a PlanError (naming `layer` and the field, as "weights.<field>") when `config`
        does not fit a layer of row length `row_length` (`pruned`: smaller than unpruned, as
        pruning its inputs left it). By default it fits."""

    # -- size -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def to_columns(self, config: WeightConfig) -> tuple[int, ...]:
        """`config` as integers, one per entry of `columns`."""

    @abc.abstractmethod
    def bits(
        self, columns: Mapping[str, np.ndarray], shapes: WeightShapes
    ) -> dict[str, np.ndarray]:
        """The weight's stored bits by part ("codes", "codebook", ...), int64 arrays like the
        columns. Their sum is the layer's size without bias and BatchNorm, exactly."""

    def facts(
        self, columns: Mapping[str, np.ndarray], shapes: WeightShapes
    ) -> dict[str, np.ndarray]:
        """Other integers a size report shows for these layers ({"k_eff": ...}); none by default."""
        return {}

    def storage_key(self, config: WeightConfig, *, out_channels: int, row_length: int) -> tuple:
        """Equal for two configs that store the same thing on this layer (VQ: k beyond k_eff
        changes nothing); by default the config itself."""
        return (config,)

    def deployed_weight_bits(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The weight bits the deployed form runs at, for the latency model's features; by
        default 32, as a layer whose weight is decoded to floats (`engine.deploy` decodes every
        kind there is, b-bit included, since this CPU has no low-bit kernels: a unit whose
        deployed form runs its own kernel says so here)."""
        return np.full(next(iter(columns.values())).shape, 32, dtype=np.int64)

    # -- proxy ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def proxy_errors(self, weight: Tensor, configs: Sequence[WeightConfig]) -> np.ndarray:
        """‖Ŵ − W‖² / ‖W‖² of each config on `weight` (float64, one per config; 0 is lossless)."""

    def probe_weight(self, weight: Tensor, config: WeightConfig) -> Tensor | None:
        """The reconstruction Ŵ of `weight` under `config`, where it costs no more than the
        proxy error did (no training, no clustering), else None (the default). A method that
        has one must return it for every config, and its `proxy_errors` must be the relative
        error of that Ŵ: the measured proxy computes the errors from these reconstructions and
        measures a layer's response at some of them (`planner.response`); a layer with none is
        probed with Gaussian noise of its options' error energies."""
        return None

    # -- apply, deploy, export ------------------------------------------------------------------

    @abc.abstractmethod
    def build(self, weight: Tensor, config: WeightConfig, settings: BuildSettings) -> nn.Module:
        """The weight source for `weight` (already pruned) under `config`, on weight's device."""

    def frozen(self, source: nn.Module) -> nn.Module:
        """The deployed form of a weight source (same weight, nothing to train); itself by
        default. Called on frozen sources too: it must be idempotent."""
        return source

    @abc.abstractmethod
    def export_tensors(self, source: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(payload tensors by name, JSON facts) of a frozen source: exactly what the size
        convention counts, and what `load_source` needs besides them."""

    @abc.abstractmethod
    def load_source(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> nn.Module:
        """The frozen source that `export_tensors` wrote (CPU tensors in, same weight out)."""

    def onnx_weight(self, source: nn.Module) -> nn.Module:
        """The ONNX form of a frozen source: a module holding the payload `export_tensors`
        counts as buffers (packed, in their stored dtypes) whose forward decodes the weight with
        tensor operations the torch exporter writes as standard ONNX operators, so that the
        exported file stores the planned form and a runtime folds the decoding at load. The
        weight it returns equals the source's.

        Raises:
            NotImplementedError: the kind has no ONNX form (the default).
        """
        raise NotImplementedError(f"the weight kind '{self.name}' has no ONNX form")


class ActivationMethod(abc.ABC):
    """One activation-quantizer kind: a module in front of a layer that quantizes its input.

    32 bits means no quantizer: a plan then has no activation config and no unit is called.

    Attributes:
        name: the method's name in plans and exported files ("n2uq").
        config_type: the plan config class (with a `bits` field).
        bits: the bit-widths it supports, all below 32.
        int8_kernel: whether its quantizer is exactly ONNX's QuantizeLinear to u8 (per-tensor
            scale and zero point), so that a layer whose input it quantizes runs an int8 kernel:
            the engine then requantizes the layer's weight to int8 per output channel and, for
            a convolution whose output no int8 layer quantizes, calibrates an output quantizer
            of this kind after it (`engine.int8_outputs`), as the runtime computes.
    """

    name: ClassVar[str]
    config_type: ClassVar[type[ActivationConfig]]
    bits: ClassVar[tuple[int, ...]]
    int8_kernel: ClassVar[bool] = False

    def config(self, bits: int) -> ActivationConfig | None:
        """The config for `bits` input bits; None at 32 (no quantizer)."""
        return None if bits == 32 else self.config_type(bits=bits)  # type: ignore[call-arg]

    @abc.abstractmethod
    def proxy_error(self, bits: int) -> float:
        """Relative squared error of quantizing a Gaussian input at `bits` (0 at 32)."""

    @abc.abstractmethod
    def build(self, config: ActivationConfig, inputs: Tensor) -> nn.Module:
        """A quantizer calibrated on `inputs`, the layer's real inputs."""

    @abc.abstractmethod
    def skeleton(self, config: ActivationConfig) -> nn.Module:
        """An uncalibrated quantizer of the same structure, whose state dict `load` fills."""

    @abc.abstractmethod
    def deployed(self, module: nn.Module) -> nn.Module:
        """The deployed form of a quantizer `build` or `skeleton` made: the same outputs, at a
        cost that does not depend on the data."""

    def onnx_form(self, module: nn.Module) -> nn.Module:
        """The ONNX form of a quantizer: the deployed form's outputs, written with standard
        operators; its buffers are what the file stores of it, and whatever the forward derives
        from them is left for the runtime to fold at load. By default the deployed form."""
        return self.deployed(module)
