"""Int8 layers in the ONNX form, written as the patterns ONNX Runtime fuses into int8 kernels.

A layer whose input quantizer is ONNX's QuantizeLinear (`PlannedLayer.int8`) computes with its
weight requantized to int8 per output channel. ONNX Runtime runs it as QLinearConv /
QLinearMatMul only where the graph reads DequantizeLinear(x) and DequantizeLinear(int8 weight)
into the convolution and QuantizeLinear right after it. compplan's model quantizes tensors where
they enter a layer; so the output of an int8 layer gets a QuantizeLinear only where the model
already quantizes that very tensor, with the same scale and zero point: when the layer's output,
after its BatchNorm (merged into the weight and bias, as the kernel needs) and a ReLU or ReLU6,
is read only by int8 layers whose input quantizers agree. Then the file computes what compplan's
model computes (a quantizer placed before a ReLU gives the same levels as after it), up to the
kernel's integer rounding. A convolution whose output flows elsewhere (a residual Add, a
pooling, the model's output) has an output quantizer of its own (`engine.int8_outputs`), after
its merged BatchNorm, and is written the same way with it; without one (a model the trace
cannot follow) it keeps its int8 weight as constants the runtime folds at load, and runs in fp32
behind its input quantizer (ONNX Runtime has no fast int8 convolution with a float output). A
Linear needs no quantized output: written as a Gemm over the flattened batch, reading
DequantizeLinear(x), DequantizeLinear(int8 weight) and DequantizeLinear(int32 bias)
(`engine.layers.int32_bias`), it runs as QGemm with a float output.

`int8_layers_(form)` rewrites an ONNX form in place and returns each planned layer's kernel
class ("int8" or "fp32"). It follows readers through a `torch.fx` trace; where the model cannot
be traced, no output is quantized and every layer runs in fp32. `planned_int8_layers_` turns a
deployed structure's int8 layers (a quantizer in front of a plain layer) back into planned
layers, so that a plan's structure, built for timing, exports as its applied model does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.int8_graph import layer_outputs
from engine.layers import DenseWeight, FoldedBatchNorm, PlannedLayer, int8_scale, int8_weight
from search_spaces.methods.uniform8 import quantize_dequantize, scale_and_zero_point

__all__ = ["Int8Layer", "int8_layers_", "planned_int8_layers_"]


class Int8Layer(nn.Module):
    """An int8 `PlannedLayer` as its ONNX form runs it.

    Args:
        layer: the planned layer (its weight source and input quantizer already in their ONNX
            and deployed forms).
        batchnorm: the folded BatchNorm that is its output's only reader, merged in (as the
            layer's `post`: the layer is the ONNX form's own copy); or None.
        output: the (scale, zero point) its output is quantized with; None: not quantized, and
            the int8 weight is written as constants the runtime folds.
    """

    def __init__(
        self,
        layer: PlannedLayer,
        batchnorm: FoldedBatchNorm | None,
        output: tuple[float, int] | None,
    ):
        super().__init__()
        if batchnorm is not None:
            layer.post = batchnorm
        self.layer, self.output = layer, output

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        if layer.act_quant is not None:
            x = layer.act_quant(x)
        w, b = layer.merged_parameters()  # as the model computes (kernel_parameters)
        if layer.kind == "linear":
            rows = x.reshape(-1, x.shape[-1])  # a Gemm: what ONNX Runtime fuses into QGemm
            y = F.linear(rows, int8_weight(w), b).reshape(*x.shape[:-1], w.shape[0])
        else:
            w = int8_weight(w) if self.output is not None else _int8_folded(w)
            conv = F.conv2d if layer.kind == "conv2d" else F.conv1d
            y = conv(x, w, b, **layer.geometry)
        return y if self.output is None else quantize_dequantize(y, *self.output)


def _int8_folded(weight: Tensor) -> Tensor:
    """`int8_weight(weight)` in operators a runtime folds at load (Div, Round, Clip, Mul), where
    a DequantizeLinear would run on every call."""
    scale = int8_scale(weight).view((-1,) + (1,) * (weight.dim() - 1))
    return torch.clamp(torch.round(weight / scale), -128, 127) * scale


def int8_layers_(form: nn.Module) -> dict[str, str]:
    """Rewrite each int8 planned layer of `form` as an `Int8Layer` (module docstring); returns
    every planned layer's kernel class by name."""
    kernels = {name: "fp32" for name, m in form.named_modules() if isinstance(m, PlannedLayer)}
    int8 = [n for n, m in form.named_modules() if isinstance(m, PlannedLayer) and m.int8]
    outputs = layer_outputs(form, int8) if int8 else {}
    for name in int8:
        layer = form.get_submodule(name)
        output, batchnorm = outputs.get(name), None
        if layer.out_quant is not None:  # its own output quantizer, after its merged BatchNorm
            fused = scale_and_zero_point(layer.out_quant)
        elif output is not None and output.readers_quantize is not None:
            fused = output.readers_quantize
            batchnorm = output.batchnorm if layer.kind != "linear" else None
        else:
            fused = None
        bn_module = form.get_submodule(batchnorm) if batchnorm is not None else layer.post
        form.set_submodule(name, Int8Layer(layer, bn_module, fused))
        if batchnorm is not None:
            form.set_submodule(batchnorm, nn.Identity())
        kernels[name] = "int8" if fused is not None or layer.kind == "linear" else "fp32"
    return kernels


def planned_int8_layers_(model: nn.Module) -> nn.Module:
    """Each `nn.Sequential(quantizer, conv or linear)` of a deployed structure whose quantizer is
    the u8 one becomes a `PlannedLayer` with that input quantizer (its weight dense), in place;
    one wrapped as `nn.Sequential(that, u8 quantizer)` (`engine.deploy.deployed` of a layer with
    an output quantizer) keeps that quantizer as its `out_quant`."""
    from search_spaces.methods.uniform8 import FixedUint8Quantizer, Uint8Config

    def int8_pair(module: nn.Module) -> bool:
        return (
            isinstance(module, nn.Sequential)
            and len(module) == 2
            and isinstance(module[0], FixedUint8Quantizer)
            and isinstance(module[1], nn.Conv1d | nn.Conv2d | nn.Linear)
        )

    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(f"{done}.") for done in replaced):
            continue  # inside a layer made already
        with_output = (
            isinstance(module, nn.Sequential)
            and len(module) == 2
            and int8_pair(module[0])
            and isinstance(module[1], FixedUint8Quantizer)
        )
        if not (with_output or int8_pair(module)):
            continue
        pair = module[0] if with_output else module
        plain = pair[1]
        layer = PlannedLayer.replacing(
            plain, DenseWeight(plain.weight), pair[0], act_config=Uint8Config()
        )
        if with_output:
            layer.out_quant, layer.out_config = module[1], Uint8Config()
        model.set_submodule(name, layer)
        replaced.append(name)
    return model
