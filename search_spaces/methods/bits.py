"""b-bit weights as one unit: b in {1, 2, 3, 4, 8, 16}, per-output-channel scales.

Size (DESIGN.md): `b·N` + a 32-bit scale per output channel. Fine-tuning trains a latent float
weight through `WeightQuantizer` (N2UQ / AdamBNN, `search_spaces.methods.quantizers`); the
frozen form is the integer levels and the scales, which is what is exported (levels bit-packed).
The proxy error is exact: the quantizer's own initial clip search, applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from search_spaces.errors import PlanError
from search_spaces.knobs import is_int
from search_spaces.methods._base import (
    BuildSettings,
    WeightConfig,
    WeightMethod,
    WeightShapes,
    check_knob,
)
from search_spaces.methods._registry import register_weight_method
from search_spaces.methods.bitpack import pack_bits, unpack_bits, unpack_bits_traced
from search_spaces.methods.quantizers import WEIGHT_QUANT_BITS, WeightQuantizer

__all__ = ["BitsConfig", "BitsKnobs", "FixedQuantizedWeight", "LowBitWeights", "QuantizedWeight"]


@dataclass(frozen=True)
class BitsConfig(WeightConfig):
    """b-bit weights (1 bit: sign × per-channel mean |W|, AdamBNN).

    Attributes:
        bits: 1, 2, 3, 4, 8 or 16.
    """

    method = "bits"
    bits: int

    def __post_init__(self) -> None:
        if not is_int(self.bits) or self.bits not in WEIGHT_QUANT_BITS:
            raise PlanError(
                f"bits={self.bits!r} is not one of {list(WEIGHT_QUANT_BITS)}", field="bits"
            )


@dataclass(frozen=True)
class BitsKnobs:
    """The bit-widths a search may pick for b-bit weights."""

    weight_bits: tuple[int, ...] = (1, 2, 3, 4, 8, 16)

    def __post_init__(self) -> None:
        if isinstance(self.weight_bits, list):
            object.__setattr__(self, "weight_bits", tuple(self.weight_bits))
        check_knob(
            self.weight_bits,
            lambda v: v in WEIGHT_QUANT_BITS,
            "weight_bits",
            f"in {list(WEIGHT_QUANT_BITS)}",
        )


class QuantizedWeight(nn.Module):
    """A latent float weight seen through a b-bit per-channel quantizer (N2UQ / AdamBNN)."""

    def __init__(self, weight: Tensor, bits: int):
        super().__init__()
        self.bits = bits
        self.latent = nn.Parameter(weight.detach().clone())
        self.quantizer = WeightQuantizer(self.latent.detach(), bits)

    def forward(self) -> Tensor:
        return self.quantizer(self.latent)

    def fixed(self) -> FixedQuantizedWeight:
        """The exported form: integer levels and per-channel scales, computing the same weight."""
        with torch.no_grad():
            q, scale = self.quantizer.quantize(self.latent)
        return FixedQuantizedWeight(q, scale, self.bits)


class FixedQuantizedWeight(nn.Module):
    """Integer levels q in [0, 2^b) and a 32-bit scale per output channel; nothing trains."""

    def __init__(self, q: Tensor, scale: Tensor, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("q", q.to(torch.int64).clone())
        self.register_buffer("scale", scale.float().clone())

    def forward(self) -> Tensor:
        return WeightQuantizer.dequantize(self.q, self.scale, self.bits)


class BitsOnnxWeight(nn.Module):
    """b-bit weights as the exported ONNX file stores them: levels bit-packed at b bits, a
    float32 scale per output channel; forward decodes them (`LowBitWeights.onnx_weight`)."""

    def __init__(self, source: FixedQuantizedWeight):
        super().__init__()
        self.bits, self.shape = source.bits, tuple(source.q.shape)
        self.register_buffer("q", pack_bits(source.q, source.bits))
        self.register_buffer("scale", source.scale.detach().cpu().float().contiguous())

    def forward(self) -> Tensor:
        count = math.prod(self.shape)
        q = unpack_bits_traced(self.q, self.bits, count).reshape(self.shape)
        return WeightQuantizer.dequantize(q, self.scale, self.bits)


@register_weight_method
class LowBitWeights(WeightMethod):
    """b-bit (and binary) weights with learned per-channel clip ranges."""

    name = "bits"
    config_type = BitsConfig
    knobs_type = BitsKnobs
    columns = ("bits",)

    def parameters(self, knobs: BitsKnobs) -> dict[str, tuple]:
        return {"weight_bits": knobs.weight_bits}

    def decode(self, values: Mapping[str, Any]) -> BitsConfig:
        return BitsConfig(bits=values["weight_bits"])

    def label(self, config: BitsConfig) -> str:
        return f"bits {config.bits}"

    def to_columns(self, config: BitsConfig) -> tuple[int, ...]:
        return (config.bits,)

    def bits(
        self, columns: Mapping[str, np.ndarray], shapes: WeightShapes
    ) -> dict[str, np.ndarray]:
        return {"packed": columns["bits"] * shapes.elements, "scales": 32 * shapes.out_channels}

    def proxy_errors(self, weight: Tensor, configs: Sequence[BitsConfig]) -> np.ndarray:
        weight = weight.detach().float().cpu()
        energy = float(weight.double().square().sum()) or 1.0
        errors: dict[int, float] = {}
        for config in configs:
            if config.bits not in errors:
                approx = self.probe_weight(weight, config)
                errors[config.bits] = float((approx - weight).double().square().sum()) / energy
        return np.asarray([errors[c.bits] for c in configs], dtype=np.float64)

    def probe_weight(self, weight: Tensor, config: BitsConfig) -> Tensor:
        with torch.no_grad():
            return WeightQuantizer(weight, config.bits)(weight)

    def build(self, weight: Tensor, config: BitsConfig, settings: BuildSettings) -> nn.Module:
        return QuantizedWeight(weight, config.bits)

    def frozen(self, source: nn.Module) -> nn.Module:
        return source.fixed() if isinstance(source, QuantizedWeight) else source

    def export_tensors(
        self, source: FixedQuantizedWeight
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {
            "q": pack_bits(source.q, source.bits),
            "scale": source.scale.detach().cpu().float().contiguous(),
        }
        return tensors, {"shape": list(source.q.shape), "bits": source.bits}

    def onnx_weight(self, source: FixedQuantizedWeight) -> nn.Module:
        return BitsOnnxWeight(source)

    def load_source(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> nn.Module:
        shape = tuple(meta["shape"])
        count = int(np.prod(shape))
        q = unpack_bits(tensors["q"], int(meta["bits"]), count).reshape(shape)
        return FixedQuantizedWeight(q, tensors["scale"], int(meta["bits"]))
