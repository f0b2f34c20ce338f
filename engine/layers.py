"""The modules a plan turns layers into.

A `PlannedLayer` replaces a Conv1d, Conv2d, Linear or Embedding at the same fully qualified name.
It runs the same operation with the same geometry, but gets its weight from a weight source (a
module whose forward returns the weight) and may quantize its input first. Weight sources come
from the weight method's unit (`search_spaces.methods`: `VQWeight`, `QuantizedWeight`, ...), the
input quantizer from the activation method's; `DenseWeight` is the float weight of a layer that is
only pruned, or only has quantized inputs. The layer records which units made them (`method`,
`act_config`), which is how freezing, export and deployment find the unit again.

A layer whose input quantizer is ONNX's QuantizeLinear (`ActivationMethod.int8_kernel`) runs an
int8 kernel on ONNX Runtime, so it computes here what that kernel computes: its weight (whatever
kind decoded it) requantized to int8 per output channel, scale max|W_c| / 127, zero point 0
(`int8_weight`), and its bias on the int32 grid of the kernel's accumulator (`int32_bias`), as
ONNX Runtime's kernels add it; a BatchNorm that alone reads an int8 convolution's output is
merged into the layer first, as the kernel computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces.methods import ActivationConfig, activation_method_of
from search_spaces.methods.uniform8 import scale_and_zero_point

__all__ = [
    "DenseWeight",
    "FoldedBatchNorm",
    "PlannedLayer",
    "int8_scale",
    "int8_weight",
    "int32_bias",
    "plain_layer",
]


class DenseWeight(nn.Module):
    """A float weight, trained as usual."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self) -> Tensor:
        return self.weight


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
    """A Conv1d, Conv2d, Linear or Embedding whose weight comes from a weight source.

    Args:
        kind: "conv1d", "conv2d", "linear" or "embedding".
        weight: a module whose forward returns the weight tensor (an embedding's: one row per
            token id).
        bias: the bias, or None (always None for an embedding).
        geometry: stride, padding, dilation and groups for a conv; padding_idx, norm_type,
            scale_grad_by_freq and sparse for an embedding ({} for Linear).
        act_quant: a module applied to the input first (an activation quantizer), or None.
        method: the weight method whose unit made `weight` ("none": a `DenseWeight`).
        act_config: the config `act_quant` was made for (None without one).

    An int8 convolution gets, after construction (`engine.int8_outputs`), `post`: the
    `FoldedBatchNorm` that alone read its output, merged in (its module in the model, named
    `merged_batchnorm`, is then an `nn.Identity`); and where no int8 layer quantizes its output,
    `out_quant`: a u8 quantizer of that output, made for `out_config`. All are None otherwise.
    """

    def __init__(
        self,
        kind: str,
        weight: nn.Module,
        bias: Tensor | None,
        geometry: dict,
        act_quant: nn.Module | None = None,
        *,
        method: str = "none",
        act_config: ActivationConfig | None = None,
    ):
        super().__init__()
        self.kind = kind
        self.geometry = dict(geometry)
        self.weight_source = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.act_quant = act_quant
        self.method = method
        self.act_config = act_config
        self.int8 = act_config is not None and activation_method_of(act_config).int8_kernel
        self.post: FoldedBatchNorm | None = None
        self.merged_batchnorm: str | None = None
        self.out_quant: nn.Module | None = None
        self.out_config: ActivationConfig | None = None

    @classmethod
    def replacing(
        cls,
        module: nn.Module,
        weight: nn.Module,
        act_quant: nn.Module | None = None,
        *,
        method: str = "none",
        act_config: ActivationConfig | None = None,
    ) -> PlannedLayer:
        """A planned layer doing what `module` (Conv1d, Conv2d, Linear or Embedding) did, with a
        new weight."""
        if isinstance(module, nn.Linear):
            kind, geometry = "linear", {}
        elif isinstance(module, nn.Embedding):
            kind, geometry = "embedding", _embedding_geometry(module)
        else:
            kind = "conv1d" if isinstance(module, nn.Conv1d) else "conv2d"
            geometry = {
                "stride": module.stride,
                "padding": module.padding,
                "dilation": module.dilation,
                "groups": module.groups,
            }
        bias = getattr(module, "bias", None)
        return cls(kind, weight, bias, geometry, act_quant, method=method, act_config=act_config)

    @property
    def weight(self) -> Tensor:
        return self.weight_source()

    def merged_parameters(self) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) with the merged BatchNorm (`post`) folded in and, for an int8 layer,
        the bias on the accumulator's int32 grid (`int32_bias`); the weight still in floats."""
        w, b = self.weight_source(), self.bias
        if self.post is not None:  # conv(x)·s + t as one convolution
            scale, shift = self.post.scale, self.post.shift
            w = w * scale.view((-1,) + (1,) * (w.dim() - 1))
            b = shift if b is None else b * scale + shift
        if self.int8 and b is not None:
            b = int32_bias(b, scale_and_zero_point(self.act_quant)[0], w)
        return w, b

    def kernel_parameters(self) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) the layer's kernel computes with: `merged_parameters`, an int8
        layer's weight requantized to int8 per output channel (`int8_weight`), as ONNX
        Runtime's int8 kernels compute them."""
        w, b = self.merged_parameters()
        return (int8_weight(w) if self.int8 else w), b

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        w, b = self.kernel_parameters()
        if self.kind == "linear":
            y = F.linear(x, w, b)
        elif self.kind == "embedding":
            return F.embedding(x, w, **self.geometry)
        else:
            conv = F.conv2d if self.kind == "conv2d" else F.conv1d
            y = conv(x, w, b, **self.geometry)
        return y if self.out_quant is None else self.out_quant(y)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.geometry}" if self.geometry else self.kind


def int8_weight(weight: Tensor) -> Tensor:
    """`weight` through int8 per output channel (symmetric: scale max|W_c| / 127, zero point
    0), as ONNX's QuantizeLinear / DequantizeLinear on axis 0 (which the torch exporter writes for
    these ops, and the runtime folds at load); with a straight-through gradient when training."""
    scale = int8_scale(weight.detach())
    zero = _zero_points(scale)
    if torch.is_grad_enabled() and weight.requires_grad:
        return torch.fake_quantize_per_channel_affine(weight, scale, zero.int(), 0, -128, 127)
    ops = torch.ops.quantized_decomposed
    q = ops.quantize_per_channel(weight, scale, zero, 0, -128, 127, torch.int8)
    return ops.dequantize_per_channel(q, scale, zero, 0, -128, 127, torch.int8)


def int8_scale(weight: Tensor) -> Tensor:
    """The per-output-channel scale of `int8_weight`: max|W_c| / 127 (1 for an all-zero row)."""
    peak = weight.abs().reshape(weight.shape[0], -1).amax(1)
    return torch.where(peak > 0, peak / 127, 1.0)


def _zero_points(scale: Tensor) -> Tensor:
    """Zero points (0) per channel, computed from `scale`: the torch exporter would store
    `zeros_like` as a tensor in the file, where this leaves the runtime to fold it at load."""
    return (scale * 0).long()


def int32_bias(bias: Tensor, input_scale: float, weight: Tensor) -> Tensor:
    """`bias` rounded to multiples of `input_scale` times `int8_scale(weight)` per channel: the
    int32 bias of an int8 kernel, written as ONNX's DequantizeLinear of int32 levels (which ONNX
    Runtime needs to fuse a Gemm into QGemm); with a straight-through gradient when training."""
    scale = int8_scale(weight.detach()) * input_scale
    # Clamped to int32's range (a near-zero weight row has a tiny scale), as the cast needs.
    levels = torch.clamp(torch.round(bias / scale), -(2**31), 2**31 - 128)
    if torch.is_grad_enabled() and bias.requires_grad:
        return bias + (levels * scale - bias).detach()
    ops = torch.ops.quantized_decomposed
    zero = _zero_points(scale)
    return ops.dequantize_per_channel(
        levels.to(torch.int32), scale, zero, 0, -(2**31), 2**31 - 1, torch.int32
    )


def plain_layer(layer: PlannedLayer) -> nn.Module:
    """An ordinary Conv1d, Conv2d or Linear holding `layer`'s kernel parameters
    (`PlannedLayer.kernel_parameters`: decoded, its merged BatchNorm folded in, an int8 layer's
    requantized); its quantizers are not part of it."""
    with torch.no_grad():
        weight, kernel_bias = layer.kernel_parameters()
        weight = weight.detach().clone()
    bias = kernel_bias is not None
    if layer.kind == "embedding":
        plain: nn.Module = nn.Embedding(*weight.shape, **layer.geometry)
    elif layer.kind == "linear":
        plain = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    else:
        conv = nn.Conv2d if layer.kind == "conv2d" else nn.Conv1d
        groups = layer.geometry["groups"]
        plain = conv(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=layer.geometry["stride"],
            padding=layer.geometry["padding"],
            dilation=layer.geometry["dilation"],
            groups=groups,
            bias=bias,
        )
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias:
            plain.bias.copy_(kernel_bias)
    return plain.to(weight.device)


def _embedding_geometry(module: nn.Embedding) -> dict:
    """What `F.embedding` needs besides the weight (discovery keeps max_norm embeddings as is)."""
    return {
        "padding_idx": module.padding_idx,
        "norm_type": module.norm_type,
        "scale_grad_by_freq": module.scale_grad_by_freq,
        "sparse": module.sparse,
    }
