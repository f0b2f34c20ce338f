"""Export a compressed model to one ONNX file that keeps its plan, for ONNX Runtime.

`export_onnx(model, example_inputs, path)` writes the model `load` rebuilt from a `.cpz` (or any
compressed model in its frozen form) with every planned layer's weight in its planned form:
each weight kind's unit gives its ONNX form (`WeightMethod.onnx_weight`: VQ codes bit-packed
with an fp16 codebook and projection; b-bit levels bit-packed with fp32 scales), a module whose
buffers are the payload and whose forward decodes the weight with standard operators. The
exporter never names a kind. The torch exporter (dynamo, opset 21) writes the graph; its
optimizer then folds everything it can except what reads those buffers, so the file holds the
compact payload and ONNX Runtime folds the decoding once, when it loads the file. BatchNorms are
folded to a scale and shift per channel (the exported `.cpz`'s form), which the runtime merges
into the convolution before them; activation quantizers are their units' deployed forms.

The file's metadata (`metadata_props["compplan"]`, JSON) records the model spec, task, plan and
input shape, as a `.cpz`'s does, so `eval` can score the file on its task.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.export import ExportError
from engine.layers import PlannedLayer
from engine.onnx_int8 import int8_layers_
from search_spaces.methods import activation_method_of, weight_method
from search_spaces.output_file import check_output_path, write_atomically

__all__ = ["METADATA_KEY", "OPSET", "OnnxReport", "export_onnx", "export_structure", "onnx_form"]

OPSET = 21  # int4 and uint4 types, per-axis DequantizeLinear
METADATA_KEY = "compplan"
FORMAT = "compplan-onnx"
FORMAT_VERSION = 1
_PAYLOAD = ".weight_source."  # the buffers of a planned layer's ONNX form, by name
_QUANTIZERS = (".act_quant.", ".out_quant.")  # and of its activation quantizers' ONNX forms
# The exporter's optimizer folds constants up to this many elements; larger ones (a range, a
# table derived from stored tensors) stay operators that the runtime folds at load, so the file
# holds no tensor that it could compute.
_FOLDED_ELEMENTS = 64


@dataclass(frozen=True)
class OnnxReport:
    """What was written.

    Attributes:
        path: the file.
        file_bytes: its size on disk.
        payload_bytes: the bytes of all its stored tensors (initializers).
        planned_bytes: the bytes of the planned layers' weight payloads (codes, codebooks,
            levels, scales), as stored.
        quantizer_bytes: the bytes of their activation quantizers' stored parameters (N2UQ's
            thresholds), which the size convention does not count.
        opset: the ONNX opset.
        dynamic_batch: whether the batch dimension is free (else fixed at the example's).
        layers: per planned layer, {"method", "kernel"}: the weight kind and the kernel class
            the file is written for ("int8" where ONNX Runtime can fuse an int8 kernel, else
            "fp32"); the file's metadata records the same.
    """

    path: Path
    file_bytes: int
    payload_bytes: int
    planned_bytes: int
    quantizer_bytes: int
    opset: int
    dynamic_batch: bool
    layers: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "payload_bytes": self.payload_bytes,
            "planned_bytes": self.planned_bytes,
            "quantizer_bytes": self.quantizer_bytes,
            "opset": self.opset,
            "dynamic_batch": self.dynamic_batch,
            "layers": self.layers,
        }


def onnx_form(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """(a copy of a frozen compressed model whose planned layers hold their units' ONNX forms
    (weights) and deployed forms (activation quantizers), with its int8 layers written as ONNX
    Runtime fuses them (`engine.onnx_int8`); each planned layer's kernel class). Its outputs
    equal `model`'s, up to the int8 kernels' rounding.

    Raises:
        ExportError: a layer's weight kind has no ONNX form (naming the layer and the kind).
    """
    form = copy.deepcopy(model).eval()
    for name, layer in form.named_modules():
        if not isinstance(layer, PlannedLayer):
            continue
        if layer.method != "none":
            try:
                layer.weight_source = weight_method(layer.method).onnx_weight(layer.weight_source)
            except NotImplementedError:
                raise ExportError(
                    f"layer '{name}': its weight kind '{layer.method}' has no ONNX form; apply "
                    "a plan without it to export to ONNX"
                ) from None
        if layer.act_quant is not None:
            layer.act_quant = activation_method_of(layer.act_config).onnx_form(layer.act_quant)
        if layer.out_quant is not None:
            layer.out_quant = activation_method_of(layer.out_config).onnx_form(layer.out_quant)
    return form, int8_layers_(form)


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    dynamic_batch: bool = True,
) -> OnnxReport:
    """Write `model` (frozen, compressed: `engine.load`'s) to `path` as ONNX (module docstring).

    Args:
        model: the compressed model.
        example_inputs: one input batch (its dtype and the sizes beyond the batch are fixed).
        path: the `.onnx` file to write (atomically; refused before any work if it cannot be).
        metadata: JSON facts to record (model spec, task, plan, input shape).
        dynamic_batch: leave the batch free where the model allows it; False fixes it at the
            example's (a file for timing at one batch).

    Raises:
        ExportError: a kind with no ONNX form, or a model the torch exporter cannot trace.
        OutputFileError: `path` cannot be written.
    """
    import onnx_ir
    import onnxscript.optimizer

    path = check_output_path(path, "--out")
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    form, kernels = onnx_form(model)
    buffers = [name for name, _ in form.named_buffers()]
    payload_names = {name for name in buffers if _PAYLOAD in name}
    quantizer_names = {name for name in buffers if any(q in f".{name}" for q in _QUANTIZERS)}
    stored = payload_names | quantizer_names
    program, dynamic = _export(form, inputs, dynamic_batch)
    ir_model = program.model

    def keep_payload(node) -> bool | None:  # None: the optimizer's own rule
        reads_stored = any(v is not None and v.name in stored for v in node.inputs)
        return False if reads_stored else None

    onnxscript.optimizer.optimize_ir(
        ir_model, should_fold=keep_payload, output_size_limit=_FOLDED_ELEMENTS
    )
    for node in ir_model.graph.all_nodes():  # the exporter's stack traces: most of the file
        node.metadata_props.clear()
        node.doc_string = None
    layers = {
        name: {"method": layer.method, "kernel": kernels[name]}
        for name, layer in model.named_modules()
        if isinstance(layer, PlannedLayer)
    }
    document = {"format": FORMAT, "version": FORMAT_VERSION, **dict(metadata or {})}
    document["layers"] = layers  # the kernel each layer is written for
    ir_model.metadata_props[METADATA_KEY] = json.dumps(document)
    proto = onnx_ir.serde.serialize_model(ir_model)
    del proto.graph.value_info[:]  # intermediate shapes: the runtime infers them at load
    write_atomically(path, proto.SerializeToString(), "--out")
    sizes = {i.name: _tensor_bytes(i) for i in proto.graph.initializer}
    return OnnxReport(
        path=path,
        file_bytes=path.stat().st_size,
        payload_bytes=sum(sizes.values()),
        planned_bytes=sum(b for name, b in sizes.items() if name in payload_names),
        quantizer_bytes=sum(b for name, b in sizes.items() if name in quantizer_names),
        opset=OPSET,
        dynamic_batch=dynamic,
        layers=layers,
    )


def export_structure(
    structure: nn.Module, example_inputs: Tensor | tuple[Tensor, ...], path: str | Path
) -> OnnxReport:
    """Write a deployed structure (`engine.deploy.deployed_structure`, or one layer's
    `deployed_layer`: built for timing, nothing clustered) to `path` as the applied model's
    file would run it, at the example's batch: each int8 pair (u8 quantizer, plain layer) as an
    int8 planned layer, int8 convolutions whose output no int8 layer quantizes with output
    quantizers at their skeleton's values (`engine.int8_outputs`). `structure` is not changed."""
    from engine.int8_outputs import quantize_int8_outputs_
    from engine.onnx_int8 import planned_int8_layers_

    form = nn.Sequential(copy.deepcopy(structure))  # a root of its own: a layer may be the pair
    planned_int8_layers_(form)
    quantize_int8_outputs_(form, None)
    return export_onnx(form, example_inputs, path, dynamic_batch=False)


def _export(form: nn.Module, inputs: tuple[Tensor, ...], dynamic_batch: bool):
    """(the torch exporter's program, whether its batch is dynamic): a free batch where the
    model allows one and it is asked for (traced at batch 2, since 1 would be specialized),
    else the example's."""
    import logging
    import warnings

    for name in ("torch.onnx", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1)
    doubled = tuple(torch.cat([x[:1], x[:1]]) for x in inputs)
    attempts = (
        *([(doubled, tuple({0: batch} for _ in inputs), True)] if dynamic_batch else []),
        (inputs, None, False),
    )
    failure: Exception | None = None
    for args, shapes, dynamic in attempts:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    form,
                    args,
                    dynamo=True,
                    opset_version=OPSET,
                    dynamic_shapes=shapes,
                    optimize=False,
                    verbose=False,
                    report=False,
                )
            return program, dynamic
        except Exception as error:  # the exporter's errors are many kinds; the last one is told
            failure = error
    first = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
    raise ExportError(
        f"the torch ONNX exporter cannot trace this model ({type(failure).__name__}: {first})"
    )


def _tensor_bytes(initializer) -> int:
    """Bytes an initializer stores (4-bit types: two to a byte)."""
    import onnx

    count = 1
    for extent in initializer.dims:
        count *= int(extent)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type)
    if initializer.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * dtype.itemsize
