"""N2UQ's activation quantizer as one unit: learned input thresholds, uniform output levels.

The module is `search_spaces.methods.quantizers.ActivationQuantizer` (calibrated on the layer's
real inputs); its deployed form is `FrozenActivationQuantizer` (same outputs, data-independent
cost), and its ONNX form that one, or at 8 bits `ThresholdsOnlyQuantizer` (the same, storing
only the thresholds). Its parameters are exported with the model's other state (counted apart
from the size convention's payload, which counts weights).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from search_spaces.errors import PlanError
from search_spaces.knobs import is_int
from search_spaces.methods._base import ActivationConfig, ActivationMethod
from search_spaces.methods._registry import register_activation_method
from search_spaces.methods.frozen_quantizer import (
    FrozenActivationQuantizer,
    ThresholdsOnlyQuantizer,
)
from search_spaces.methods.quantizers import ACTIVATION_QUANT_BITS, ActivationQuantizer

__all__ = ["N2UQ", "N2UQConfig"]

# Relative squared error of a b-bit uniform quantizer on Gaussian data with its best clipping
# (Lloyd–Max–style tables for the uniform case): the proxy's price of quantizing a layer's input.
_GAUSSIAN_ERROR = {2: 0.1188, 3: 0.03744, 4: 0.01154, 8: 0.0001}
# A quantizer's grid tables up to this many elements are stored in its ONNX form (4 bits: about
# 200); larger ones (8 bits: over 2,000) are computed from the thresholds at load.
_STORED_TABLE_ELEMENTS = 512


@dataclass(frozen=True)
class N2UQConfig(ActivationConfig):
    """N2UQ at `bits` input bits (2, 3, 4 or 8)."""

    method = "n2uq"
    bits: int

    def __post_init__(self) -> None:
        if not is_int(self.bits) or self.bits not in ACTIVATION_QUANT_BITS:
            raise PlanError(
                f"bits={self.bits!r} is not one of {list(ACTIVATION_QUANT_BITS)}", field="bits"
            )


@register_activation_method
class N2UQ(ActivationMethod):
    """N2UQ (Liu et al., CVPR 2022): nonuniform thresholds, uniform outputs."""

    name = "n2uq"
    config_type = N2UQConfig
    bits = ACTIVATION_QUANT_BITS

    def proxy_error(self, bits: int) -> float:
        return _GAUSSIAN_ERROR.get(bits, 0.0)

    def build(self, config: N2UQConfig, inputs: Tensor) -> nn.Module:
        quantizer = ActivationQuantizer(config.bits).to(inputs.device)
        quantizer.init_from(inputs)
        return quantizer

    def skeleton(self, config: N2UQConfig) -> nn.Module:
        return ActivationQuantizer(config.bits)

    def deployed(self, module: nn.Module) -> nn.Module:
        return FrozenActivationQuantizer.of(module)

    def onnx_form(self, module: nn.Module) -> nn.Module:
        frozen = module if isinstance(module, FrozenActivationQuantizer) else self.deployed(module)
        # Deriving the tables takes a few KB of graph: worth it only where they are larger.
        tables = frozen.cell_base.numel() + frozen.cell_thresholds.numel()
        return ThresholdsOnlyQuantizer(frozen) if tables > _STORED_TABLE_ELEMENTS else frozen
