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
kernel's integer rounding. A Linear needs no quantized output: written as a Gemm over the
flattened batch, reading DequantizeLinear(x), DequantizeLinear(int8 weight) and
DequantizeLinear(int32 bias) (`engine.layers.int32_bias`), it runs as QGemm with a float output.
A convolution whose output flows elsewhere (a residual Add, a pooling, the model's output) keeps
its int8 weight as constants the runtime folds at load, and runs in fp32 behind its input
quantizer (ONNX Runtime has no fast int8 convolution with a float output).

`int8_layers_(form)` rewrites an ONNX form in place and returns each planned layer's kernel
class ("int8" or "fp32"). It follows readers through a `torch.fx` trace; where the model cannot
be traced, no output is quantized and every layer runs in fp32. `planned_int8_layers_` turns a
deployed structure's int8 layers (a quantizer in front of a plain layer) back into planned
layers, so that a plan's structure, built for timing, exports as its applied model does.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from engine.layers import DenseWeight, FoldedBatchNorm, PlannedLayer, int8_weight, int32_bias
from search_spaces.methods.uniform8 import quantize_dequantize

__all__ = ["Int8Layer", "int8_layers_", "planned_int8_layers_"]

logger = logging.getLogger("compplan")

_RELUS = (nn.ReLU, nn.ReLU6)


class Int8Layer(nn.Module):
    """An int8 `PlannedLayer` as its ONNX form runs it.

    Args:
        layer: the planned layer (its weight source and input quantizer already in their ONNX
            and deployed forms).
        batchnorm: the folded BatchNorm that is its output's only reader, merged in; or None.
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
        self.kind, self.geometry = layer.kind, dict(layer.geometry)
        self.weight_source, self.act_quant, self.bias = (
            layer.weight_source,
            layer.act_quant,
            layer.bias,
        )
        scale = None if batchnorm is None else batchnorm.scale.detach().clone()
        shift = None if batchnorm is None else batchnorm.shift.detach().clone()
        self.register_buffer("post_scale", scale)
        self.register_buffer("post_shift", shift)
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        w, b = self.weight_source(), self.bias
        if self.post_scale is not None:  # conv(x)·s + t as one convolution
            w = w * self.post_scale.view((-1,) + (1,) * (w.dim() - 1))
            b = self.post_shift if b is None else b * self.post_scale + self.post_shift
        if self.kind == "linear":
            if b is not None:
                b = int32_bias(b, float(self.act_quant.scale), w)
            rows = x.reshape(-1, x.shape[-1])  # a Gemm: what ONNX Runtime fuses into QGemm
            y = F.linear(rows, int8_weight(w), b).reshape(*x.shape[:-1], w.shape[0])
        else:
            w = int8_weight(w) if self.output is not None else _int8_folded(w)
            y = (F.conv2d if self.kind == "conv2d" else F.conv1d)(x, w, b, **self.geometry)
        return y if self.output is None else quantize_dequantize(y, *self.output)


def _int8_folded(weight: Tensor) -> Tensor:
    """`int8_weight(weight)` in operators a runtime folds at load (Div, Round, Clip, Mul), where
    a DequantizeLinear would run on every call."""
    peak = weight.abs().reshape(weight.shape[0], -1).amax(1)
    scale = torch.where(peak > 0, peak / 127, 1.0)
    scale = scale.view((-1,) + (1,) * (weight.dim() - 1))
    return torch.clamp(torch.round(weight / scale), -128, 127) * scale


class _Tracer(fx.Tracer):
    """Stops at planned layers and at modules without children."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, PlannedLayer) or next(m.children(), None) is None


def int8_layers_(form: nn.Module) -> dict[str, str]:
    """Rewrite each int8 planned layer of `form` as an `Int8Layer` (module docstring); returns
    every planned layer's kernel class by name."""
    kernels = {name: "fp32" for name, m in form.named_modules() if isinstance(m, PlannedLayer)}
    int8 = [n for n, m in form.named_modules() if isinstance(m, PlannedLayer) and m.int8]
    if not int8:
        return kernels
    try:
        graph = _Tracer().trace(form)
    except Exception as error:  # any model a user brings may defeat the tracer
        logger.debug("int8 outputs left unquantized: the model cannot be traced (%s)", error)
        graph = None
    calls: dict[str, int] = {}
    nodes: dict[str, fx.Node] = {}
    for node in graph.nodes if graph is not None else ():
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
            nodes[node.target] = node
    for name in int8:
        layer = form.get_submodule(name)
        fused = _fusion(form, nodes.get(name), calls) if calls.get(name) == 1 else None
        batchnorm, output = fused if fused is not None else (None, None)
        form.set_submodule(
            name, Int8Layer(layer, batchnorm and form.get_submodule(batchnorm), output)
        )
        if batchnorm is not None:
            form.set_submodule(batchnorm, nn.Identity())
        kernels[name] = "int8" if output is not None or layer.kind == "linear" else "fp32"
    return kernels


def _fusion(form: nn.Module, node: fx.Node | None, calls: dict[str, int]):
    """(the BatchNorm to merge or None, the output's (scale, zero point)) where the layer's
    output, through at most a BatchNorm and a ReLU, is read only by int8 layers whose input
    quantizers agree; None elsewhere."""
    if node is None:
        return None
    layer = form.get_submodule(node.target)
    batchnorm = None
    node, users = _past_identities(form, node)
    if len(users) == 1 and _is_module(form, users[0], FoldedBatchNorm) and layer.kind != "linear":
        if calls.get(users[0].target) != 1 or len(users[0].args) != 1:
            return None
        batchnorm, node = users[0].target, users[0]
        node, users = _past_identities(form, node)
    if len(users) == 1 and _is_relu(form, users[0]):
        node, users = _past_identities(form, users[0])
    params = set()
    for user in users:
        if not _is_module(form, user, PlannedLayer) or user.args != (node,) or user.kwargs:
            return None
        reader = form.get_submodule(user.target)
        quantizer = reader.act_quant
        if not reader.int8 or not hasattr(quantizer, "zero_point"):
            return None
        params.add((float(quantizer.scale), int(quantizer.zero_point)))
    if len(params) != 1:
        return None
    return batchnorm, params.pop()


def _past_identities(form: nn.Module, node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """(`node`, or the last `nn.Identity` it alone feeds, in a chain; that node's readers): a
    BatchNorm merged already leaves an Identity in its place."""
    users = list(node.users)
    while len(users) == 1 and _is_module(form, users[0], nn.Identity):
        node = users[0]
        users = list(node.users)
    return node, users


def _is_module(form: nn.Module, node: fx.Node, kind: type) -> bool:
    return node.op == "call_module" and isinstance(form.get_submodule(node.target), kind)


def _is_relu(form: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = form.get_submodule(node.target)
        if isinstance(module, nn.Hardtanh):  # ReLU6 is one
            return module.min_val == 0
        return isinstance(module, _RELUS)
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu, F.relu6)
    return node.op == "call_method" and node.target == "relu"


def planned_int8_layers_(model: nn.Module) -> nn.Module:
    """Each `nn.Sequential(quantizer, conv or linear)` of a deployed structure whose quantizer is
    the u8 one becomes a `PlannedLayer` with that input quantizer (its weight dense), in place."""
    from search_spaces.methods.uniform8 import FixedUint8Quantizer, Uint8Config

    for name, module in list(model.named_modules()):
        if (
            isinstance(module, nn.Sequential)
            and len(module) == 2
            and isinstance(module[0], FixedUint8Quantizer)
            and isinstance(module[1], nn.Conv1d | nn.Conv2d | nn.Linear)
        ):
            plain = module[1]
            layer = PlannedLayer.replacing(
                plain, DenseWeight(plain.weight), module[0], act_config=Uint8Config()
            )
            model.set_submodule(name, layer)
    return model
