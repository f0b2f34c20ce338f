"""Compression kinds, one registered unit each: weight methods and activation quantizers.

    from search_spaces.methods import WeightMethod, register_weight_method, weight_method
    weight_method("vq").candidates(knobs)      # what the search may pick
    weight_method("vq").bits(columns, shapes)  # exact size, over a batch

Builtin weight methods: "vq" (LR²VQ / PQ, `vq`) and "bits" (b-bit weights, `bits`); builtin
activation quantizers: "n2uq" (`n2uq`: 2 to 8 bits, nonuniform; no CPU runtime runs it fast) and
"uint8" (`uniform8`: ONNX's QuantizeLinear, the int8 kernels' inputs). A new kind is a
subclass of `WeightMethod` or `ActivationMethod` (`_base`, whose docstrings state the contract
and the call order) decorated with `register_weight_method` / `register_activation_method`;
nothing else changes.

The torch code the units need lives here too, below the engine, so that the engine, the
predictors and the planner reach it without an upward import: `lr2vq` (k-means), `quantizers`
(fake quantizers), `frozen_quantizer` (the deployed activation quantizer), `bitpack`.
"""

from search_spaces.methods import bits as _bits  # noqa: F401 (registers "bits")
from search_spaces.methods import n2uq as _n2uq  # noqa: F401 (registers "n2uq")
from search_spaces.methods import uniform8 as _uniform8  # noqa: F401 (registers "uint8")
from search_spaces.methods import vq as _vq  # noqa: F401 (registers "vq")
from search_spaces.methods._base import (
    ActivationConfig,
    ActivationMethod,
    BuildSettings,
    WeightConfig,
    WeightMethod,
    WeightShapes,
    check_knob,
)
from search_spaces.methods._registry import (
    AUTO_ACTIVATION,
    activation_bits_of,
    activation_method,
    activation_method_for,
    activation_method_of,
    activation_methods,
    register_activation_method,
    register_weight_method,
    registered,
    unregister,
    weight_method,
    weight_method_code,
    weight_method_of,
    weight_methods,
)
from search_spaces.methods.bits import BitsConfig
from search_spaces.methods.deployed import deployed_layer
from search_spaces.methods.n2uq import N2UQConfig
from search_spaces.methods.uniform8 import Uint8Config
from search_spaces.methods.vq import VQConfig

DEFAULT_ACTIVATION_METHOD = "n2uq"

__all__ = [
    "AUTO_ACTIVATION",
    "DEFAULT_ACTIVATION_METHOD",
    "ActivationConfig",
    "ActivationMethod",
    "BitsConfig",
    "BuildSettings",
    "N2UQConfig",
    "Uint8Config",
    "VQConfig",
    "WeightConfig",
    "WeightMethod",
    "WeightShapes",
    "activation_bits_of",
    "activation_method",
    "activation_method_for",
    "activation_method_of",
    "activation_methods",
    "check_knob",
    "deployed_layer",
    "register_activation_method",
    "register_weight_method",
    "registered",
    "unregister",
    "weight_method",
    "weight_method_code",
    "weight_method_of",
    "weight_methods",
]
