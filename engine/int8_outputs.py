"""Output quantizers for int8 convolutions whose outputs no int8 layer quantizes.

ONNX Runtime runs a convolution as an int8 kernel (QLinearConv) only where its output is
quantized, and compplan quantizes tensors where they enter a layer. So an int8 convolution whose
output flows into a residual Add, a pooling or the model's output would run in fp32: half of
ResNet-18's convolutions, every projection of MobileNetV2's residual blocks.
`quantize_int8_outputs_(model, calibration)` gives each such convolution a u8 quantizer of its
own output, of the kind of its input quantizer, as ONNX Runtime's quantization tool does,
calibrated on the outputs it sees (the unit's `build`, so the same clip search). It sits after
the BatchNorm that alone reads the convolution's output, which is merged into the layer
(`PlannedLayer.post`; its module becomes an `nn.Identity`), as the kernel needs and as the
runtime merges it. The Add or pooling after it then reads dequantized values and runs in fp32,
as the file runs it. Every other int8 convolution gets its lone BatchNorm merged when the model
is frozen for export (`merge_int8_batchnorms_`), so the exported model rounds the merged weight
and bias as the kernel does, while fine-tuning still normalises with batch statistics.

Linear layers need none: ONNX Runtime runs them as QGemm with a float output
(`engine.onnx_int8`). Convolutions whose readers quantize their output already, and layers the
trace cannot follow, are left as they are.
"""

from __future__ import annotations

from torch import Tensor, nn

from engine.calibrate import captured_tensors
from engine.int8_graph import layer_outputs
from engine.layers import FoldedBatchNorm, PlannedLayer
from search_spaces.methods import activation_method_of

__all__ = ["merge_int8_batchnorms_", "quantize_int8_outputs_"]


def quantize_int8_outputs_(model: nn.Module, calibration: Tensor | None) -> list[str]:
    """Give each int8 convolution of `model` whose output no int8 layer quantizes an output
    quantizer, after the BatchNorm that alone reads it, merged in (module docstring), in place;
    returns their names.

    Args:
        model: a model with planned layers (eval mode is used while calibrating).
        calibration: a batch of inputs to calibrate the quantizers on; None leaves them at
            their skeleton's values (a structure for timing).
    """
    names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, PlannedLayer) and m.int8 and m.kind != "linear" and m.out_quant is None
    ]
    if not names:
        return []
    outputs = layer_outputs(model, names)
    chosen = [name for name, out in outputs.items() if out.readers_quantize is None]
    _merge_(model, {name: outputs[name].batchnorm for name in chosen})
    seen = {} if calibration is None else captured_tensors(model, chosen, calibration, outputs=True)
    for name in chosen:
        layer = model.get_submodule(name)
        config = layer.act_config  # the int8 kind of its input quantizer: the kernel's output
        unit = activation_method_of(config)
        quantizer = unit.build(config, seen[name]) if name in seen else unit.skeleton(config)
        layer.out_quant, layer.out_config = quantizer, config
    return chosen


def merge_int8_batchnorms_(model: nn.Module) -> None:
    """Merge into each int8 convolution of `model` the BatchNorm that alone reads its output
    (`PlannedLayer.post`), in place, so that the model rounds the merged weight and bias as the
    kernel does. `engine.export.freeze_` does this: while fine-tuning, a BatchNorm that no
    output quantizer follows still normalises with its batch statistics."""
    names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, PlannedLayer) and m.int8 and m.kind != "linear" and m.post is None
    ]
    if names:
        outputs = layer_outputs(model, names)
        _merge_(model, {name: out.batchnorm for name, out in outputs.items()})


def _merge_(model: nn.Module, batchnorms: dict[str, str | None]) -> None:
    """Each layer's BatchNorm (by name; None: none) folded into its `post`, its place an
    `nn.Identity`."""
    for name, batchnorm in batchnorms.items():
        if batchnorm is None:
            continue
        layer, module = model.get_submodule(name), model.get_submodule(batchnorm)
        folded = module if isinstance(module, FoldedBatchNorm) else FoldedBatchNorm.of(module)
        layer.post = folded.to(next(layer.parameters()).device)
        layer.merged_batchnorm = batchnorm
        model.set_submodule(batchnorm, nn.Identity())
