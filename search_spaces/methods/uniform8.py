"""A uniform 8-bit activation quantizer as one unit: what ONNX's QuantizeLinear computes.

One scale and one zero point per tensor, unsigned 8-bit levels: `(clamp(round(x / s) + z, 0,
255) - z) · s`, which the exported file writes as a QuantizeLinear / DequantizeLinear pair that
ONNX Runtime fuses with the layer into an int8 kernel (QLinearConv, QLinearMatMul). So a layer
whose input this unit quantizes runs an int8 kernel (`int8_kernel`): its weight is requantized to
int8 per output channel (`engine.layers.PlannedLayer`), and where it is a convolution whose
output no int8 layer quantizes, an output quantizer of this kind is calibrated after it
(`engine.int8_outputs`, from `engine.apply`), as ONNX Runtime's own quantization tool does.

Calibration picks the clip range [lo, hi] (lo ≤ 0 ≤ hi, so 0 is a level) with the least squared
error among shrinkings of the data's range, as N2UQ's `init_from`; data that are never negative
(after a ReLU) get zero point 0, so the quantizer clips like the ReLU and the runtime drops it.
Fine-tuning trains the scale (LSQ's gradient, `torch._fake_quantize_learnable_per_tensor_affine`);
the zero point stays as calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.ao.quantization.fx._decomposed  # registers the quantized_decomposed ops
from torch import Tensor, nn

from search_spaces.errors import PlanError
from search_spaces.methods._base import ActivationConfig, ActivationMethod
from search_spaces.methods._registry import register_activation_method
from search_spaces.methods.quantizers import _RANGE_FRACTIONS, calibration_sample

__all__ = [
    "FixedUint8Quantizer",
    "Uint8Config",
    "Uint8Quantizer",
    "UniformUint8",
    "quantize_dequantize",
    "scale_and_zero_point",
]

_LEVELS = 255
# Relative squared error of a uniform 8-bit quantizer on Gaussian data with its best clipping.
_GAUSSIAN_ERROR = {8: 0.0001}


@dataclass(frozen=True)
class Uint8Config(ActivationConfig):
    """Uniform unsigned 8-bit activations (per-tensor scale and zero point); bits is 8."""

    method = "uint8"
    bits: int = 8

    def __post_init__(self) -> None:
        if self.bits != 8 or isinstance(self.bits, bool):
            raise PlanError(
                f"bits={self.bits!r} is not 8 (uint8 quantizes to 8 bits)", field="bits"
            )


class Uint8Quantizer(nn.Module):
    """Fake quantization onto 256 levels `(q - zero_point) · scale`, q in 0…255.

    Its forward is `torch.fake_quantize_per_tensor_affine`, which the torch exporter writes as
    QuantizeLinear + DequantizeLinear; while training with gradients it is the learnable
    variant (same values, LSQ's gradient for the scale).
    """

    zero_point: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0 / _LEVELS))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}"

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """Calibrate the scale and zero point on a batch of real activations.

        Raises:
            ValueError: if `x` is empty or not finite.
        """
        sample = calibration_sample(x)
        low, high = min(float(sample.min()), 0.0), max(float(sample.max()), 0.0)
        best = (math.inf, 1.0, 0)
        for fraction in _RANGE_FRACTIONS.tolist():
            scale, zero = _affine(low * fraction, high * fraction)
            approx = torch.fake_quantize_per_tensor_affine(sample, scale, zero, 0, _LEVELS)
            error = float((approx - sample).square().sum())
            if error < best[0]:
                best = (error, scale, zero)
        _, scale, zero = best
        self.scale.fill_(scale)
        self.zero_point.fill_(zero)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and self.scale.requires_grad:
            factor = 1.0 / math.sqrt(max(x[0].numel(), 1) * _LEVELS)  # LSQ's gradient scale
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.scale.reshape(1), self.zero_point.reshape(1).float(), 0, _LEVELS, factor
            )
        return quantize_dequantize(x, float(self.scale), int(self.zero_point))


class FixedUint8Quantizer(nn.Module):
    """A `Uint8Quantizer` at inference: the same outputs, its scale and zero point constants of
    the graph (the torch exporter writes them into QuantizeLinear, and traces a free batch)."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = scale, zero_point

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}, zero_point={self.zero_point}"

    def forward(self, x: Tensor) -> Tensor:
        return quantize_dequantize(x, self.scale, self.zero_point)


def scale_and_zero_point(quantizer: nn.Module) -> tuple[float, int]:
    """(scale, zero point) of a `Uint8Quantizer` or `FixedUint8Quantizer`, as numbers."""
    scale = quantizer.scale
    return (
        float(scale.detach()) if isinstance(scale, Tensor) else float(scale),
        int(quantizer.zero_point),
    )


def quantize_dequantize(x: Tensor, scale: float, zero_point: int) -> Tensor:
    """QuantizeLinear then DequantizeLinear to u8, as the ops the torch exporter writes as such
    (`fake_quantize_per_tensor_affine` has no kernel for a free batch dimension)."""
    ops = torch.ops.quantized_decomposed
    q = ops.quantize_per_tensor(x, scale, zero_point, 0, _LEVELS, torch.uint8)
    return ops.dequantize_per_tensor(q, scale, zero_point, 0, _LEVELS, torch.uint8)


def _affine(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of [lo, hi] (lo ≤ 0 ≤ hi) on 0…255, zero exactly a level."""
    if hi - lo <= 0:
        return 1.0 / _LEVELS, 0  # all zeros: any scale keeps them
    scale = (hi - lo) / _LEVELS
    return scale, min(max(round(-lo / scale), 0), _LEVELS)


@register_activation_method
class UniformUint8(ActivationMethod):
    """Uniform u8 activations, as ONNX's QuantizeLinear: the int8 kernels' inputs."""

    name = "uint8"
    config_type = Uint8Config
    bits = (8,)
    int8_kernel = True

    def proxy_error(self, bits: int) -> float:
        return _GAUSSIAN_ERROR.get(bits, 0.0)

    def build(self, config: Uint8Config, inputs: Tensor) -> nn.Module:
        quantizer = Uint8Quantizer().to(inputs.device)
        quantizer.init_from(inputs)
        return quantizer

    def skeleton(self, config: Uint8Config) -> nn.Module:
        return Uint8Quantizer()

    def deployed(self, module: nn.Module) -> nn.Module:
        if isinstance(module, FixedUint8Quantizer):
            return module
        return FixedUint8Quantizer(float(module.scale.detach()), int(module.zero_point))
