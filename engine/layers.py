"""The modules a plan turns layers into.

A `PlannedLayer` replaces a Conv1d, Conv2d or Linear at the same fully qualified name. It runs the
same operation with the same geometry, but gets its weight from a weight source (a module whose
forward returns the weight) and may quantize its input first:

- `DenseWeight`: the float weight (a layer that is only pruned, or only has quantized inputs);
- `VQWeight`: fixed codes, a trainable codebook and (LR²VQ) a trainable projection;
- `QuantizedWeight`: a trainable latent weight seen through a `WeightQuantizer` (fine-tuning);
  `FixedQuantizedWeight` is its exported form (integer levels and per-channel scales).

Codebooks and projections are stored in fp16 in the exported file, so `VQWeight` always computes
with fp16-rounded values (straight-through for the gradient): the in-memory model and the reloaded
one compute the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.quantizers import WeightQuantizer
from engine.vq import VQResult, decode

__all__ = [
    "DenseWeight",
    "FixedQuantizedWeight",
    "FoldedBatchNorm",
    "PlannedLayer",
    "QuantizedWeight",
    "VQWeight",
]


def _fp16_exact(t: Tensor) -> Tensor:
    """t rounded to fp16 precision in the forward pass; the gradient passes as if unrounded."""
    return t + (t.half().float() - t).detach()


class DenseWeight(nn.Module):
    """A float weight, trained as usual."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self) -> Tensor:
        return self.weight


class VQWeight(nn.Module):
    """A vector-quantized weight: codes (buffer, fixed) and codebook / projection (trainable)."""

    def __init__(self, result: VQResult):
        super().__init__()
        self.shape = tuple(result.shape)
        self.register_buffer("codes", result.codes.clone())
        self.codebook = nn.Parameter(result.codebook.half().float())
        if result.projection is None:
            self.projection = None
        else:
            self.projection = nn.Parameter(result.projection.half().float())

    @property
    def code_bits(self) -> int:
        return (self.codebook.shape[0] - 1).bit_length()

    def forward(self) -> Tensor:
        projection = None if self.projection is None else _fp16_exact(self.projection)
        return decode(self.codes, _fp16_exact(self.codebook), projection, self.shape)


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


class FoldedBatchNorm(nn.Module):
    """An eval-mode BatchNorm folded to one scale and one shift per channel (exported form)."""

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone())
        self.shift = nn.Parameter(shift.detach().clone())

    @classmethod
    def of(cls, bn: nn.modules.batchnorm._BatchNorm) -> FoldedBatchNorm:
        with torch.no_grad():
            inv_std = torch.rsqrt(bn.running_var + bn.eps)
            weight = bn.weight if bn.affine else torch.ones_like(inv_std)
            bias = bn.bias if bn.affine else torch.zeros_like(inv_std)
            scale = weight * inv_std
            return cls(scale, bias - bn.running_mean * scale)

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(view) + self.shift.view(view)


class PlannedLayer(nn.Module):
    """A Conv1d, Conv2d or Linear whose weight comes from a weight source.

    Args:
        kind: "conv1d", "conv2d" or "linear".
        weight: a module whose forward returns the weight tensor.
        bias: the bias, or None.
        geometry: stride, padding, dilation and groups for a conv ({} for Linear).
        act_quant: a module applied to the input first (an N2UQ activation quantizer), or None.
    """

    def __init__(
        self,
        kind: str,
        weight: nn.Module,
        bias: Tensor | None,
        geometry: dict,
        act_quant: nn.Module | None = None,
    ):
        super().__init__()
        self.kind = kind
        self.geometry = dict(geometry)
        self.weight_source = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.act_quant = act_quant

    @classmethod
    def replacing(cls, module: nn.Module, weight: nn.Module, act_quant: nn.Module | None = None):
        """A planned layer doing what `module` (Conv1d, Conv2d or Linear) did, with a new weight."""
        if isinstance(module, nn.Linear):
            kind, geometry = "linear", {}
        else:
            kind = "conv1d" if isinstance(module, nn.Conv1d) else "conv2d"
            geometry = {
                "stride": module.stride,
                "padding": module.padding,
                "dilation": module.dilation,
                "groups": module.groups,
            }
        return cls(kind, weight, module.bias, geometry, act_quant)

    @property
    def weight(self) -> Tensor:
        return self.weight_source()

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        w = self.weight_source()
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        conv = F.conv2d if self.kind == "conv2d" else F.conv1d
        return conv(x, w, self.bias, **self.geometry)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.geometry}" if self.geometry else self.kind
