"""Export a compressed model to one safetensors file, and load it back.

What the file holds, by the size convention (so its tensor payload is the predicted size, up to
padding each bit-packed tensor to whole bytes):
- each planned layer's weight as its method's unit stores it (`WeightMethod.export_tensors`:
  VQ's codes bit-packed at log2(k_eff) bits with fp16 codebook and projection; b-bit levels
  bit-packed with fp32 scales), under "<layer>.weight_source.<name>"; bias in fp32;
- BatchNorms folded to one fp32 scale and one fp32 shift per channel;
- everything else in fp32.
Activation-quantizer parameters and other buffers are stored too; they are counted apart
("extra"), since the size convention counts weights.

JSON metadata (under the key "compplan") records the model spec, the plan, the keep ratios, the
input shape and each planned layer's structure (its geometry, its weight method with the facts
its unit needs, its activation config), so that `load` can rebuild the architecture: build the
uncompressed model from its spec (structure only), prune it to the same shapes, put planned
layers in place (weights from their units' `load_source`, activation quantizers as skeletons),
fold its BatchNorms, and load the other tensors.

Export freezes the model first (`freeze_`): each weight source takes its unit's frozen form and
BatchNorms are folded. The frozen in-memory model and the loaded one compute identical outputs.
The file is written atomically (`search_spaces.output_file`): a reader never sees half of one.

What `load` checks, in order, so that a damaged (or edited) file is refused in one line before
anything it names is allocated:
1. the header: the metadata, and each tensor's dtype and shape as the safetensors header
   declares them (no tensor data is read);
2. the input shape, bounded (the structure is traced on zeros of it);
3. the structure: built from its spec (or given) and traced; the recorded plan must fit it, the
   recorded keeps must be the plan's, and the structure is pruned as the plan says;
4. every planned layer's record against the plan and the pruned layer (`_check_layer`): kind,
   geometry, bias, activation config, weight shape, the unit's size columns and facts (k_eff,
   m, d̃, bits), any other integer fact bounded by the layer's weights, and the bytes its
   tensors declare against the bits the plan sizes;
5. only then the tensors (their bytes are bounded by the file's size) and the checksum, which
   covers the metadata too (format 3), before any unit rebuilds a weight from them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.apply import AppliedPlan, applied_plan_of
from engine.int8_outputs import merge_int8_batchnorms_
from engine.layers import DenseWeight, FoldedBatchNorm, PlannedLayer
from engine.pruning import prune_
from search_spaces.attention import split_attention_
from search_spaces.discover import discover
from search_spaces.graph import ModelGraph
from search_spaces.methods import WeightConfig, WeightShapes, activation_method, weight_method
from search_spaces.output_file import OutputFileError, write_atomically
from search_spaces.plan import LayerPlan, Plan, PlanError, group_keeps, validate_plan

__all__ = [
    "ExportError",
    "ExportReport",
    "example_inputs",
    "export",
    "freeze_",
    "load",
    "metadata_document",
    "read_metadata",
]

FORMAT = "compplan-model"
# 2: weights stored by their units; layer metadata {"weights": {"method": ...}, "activations"}.
# 3: the checksum covers the metadata too, not only the tensors.
FORMAT_VERSION = 3
# Format 2 files still load: their layout is format 3's, and every size their metadata names
# passes the same checks; only their checksum leaves the metadata out.
_OLDEST_VERSION = 2
_META_KEY = "compplan"
_REQUIRED_KEYS = frozenset({"input_shape", "plan", "keeps", "layers", "extra", "aliases", "sha256"})
_SOURCE = "weight_source"
# The structure is traced on zeros of the recorded input shape, which nothing else bounds (a
# plan fits any input size). Export records the example inputs apply_plan_ traced, one example
# as a rule: 2**24 elements (64 MiB of fp32; 64 images of 3x224x224 would take 9.6M) is beyond
# any of those and keeps an edited shape from making that trace huge.
_MAX_INPUT_ELEMENTS = 1 << 24
# Bytes per element of the safetensors dtypes, to size a tensor from its header alone.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


def _canonical_metadata(meta: Mapping[str, Any]) -> bytes:
    """The metadata without its checksum, as one canonical JSON text (sorted keys, no spaces)."""
    rest = {key: value for key, value in meta.items() if key != "sha256"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()


def _digest(tensors: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """SHA-256 over the metadata (format 3; None: format 2 left it out) and every tensor's name,
    dtype, shape and bytes: damage anywhere shows."""
    digest = hashlib.sha256()
    if meta is not None:
        digest.update(_canonical_metadata(meta) + b"|")
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ExportError(ValueError):
    """A file that is not a compplan model, is damaged, or does not fit the model given."""


@dataclass(frozen=True)
class ExportReport:
    """What was written.

    Attributes:
        path: the file.
        file_bytes: the file's size on disk (payload, extra tensors, header).
        payload_bytes: the tensors the size convention counts.
        extra_bytes: activation-quantizer parameters and other buffers.
        packed_tensors: how many bit-packed tensors there are (each pads to < 1 byte more).
    """

    path: Path
    file_bytes: int
    payload_bytes: int
    extra_bytes: int
    packed_tensors: int

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "payload_bytes": self.payload_bytes,
            "extra_bytes": self.extra_bytes,
            "packed_tensors": self.packed_tensors,
        }


def freeze_(model: nn.Module, *, merge_int8: bool = True) -> nn.Module:
    """Put `model` in its deployed form, in place: each weight source in its unit's frozen form
    (b-bit: integer levels), folded BatchNorms (merged into the int8 convolutions they alone
    read: `engine.int8_outputs.merge_int8_batchnorms_`), eval mode.

    Idempotent. Training after freezing trains the folded scales and shifts, not BatchNorms.
    `merge_int8=False` leaves the BatchNorms unmerged (`load` merges them once their values are
    in, which also serves files written before they were merged at export).
    """
    model.eval()
    frozen: dict[int, nn.Module] = {}  # tied layers share one source: freeze it once
    for name, module in list(model.named_modules()):
        if isinstance(module, PlannedLayer) and module.method != "none":
            source = module.weight_source
            if id(source) not in frozen:
                frozen[id(source)] = weight_method(module.method).frozen(source)
            module.weight_source = frozen[id(source)]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            model.set_submodule(name, FoldedBatchNorm.of(module))
    if merge_int8:
        merge_int8_batchnorms_(model)
    return model


def _layer_record(layer: PlannedLayer) -> tuple[dict, dict[str, Tensor]]:
    """(the layer's metadata, its weight's payload tensors by name under the weight source)."""
    meta: dict = {
        "kind": layer.kind,
        "geometry": layer.geometry,
        "bias": layer.bias is not None,
        "activations": None if layer.act_config is None else layer.act_config.to_dict(),
    }
    if layer.post is not None:  # an int8 convolution's merged BatchNorm
        meta["post_batchnorm"] = layer.merged_batchnorm
    if layer.out_quant is not None:  # and its output quantizer
        meta["output"] = layer.out_config.to_dict()
    if layer.method == "none":
        meta["weights"] = {"method": "none", "shape": list(layer.weight_source.weight.shape)}
        return meta, {}
    tensors, facts = weight_method(layer.method).export_tensors(layer.weight_source)
    meta["weights"] = {"method": layer.method, **facts}
    return meta, tensors


def export(
    model: nn.Module,
    path: str | Path,
    *,
    model_spec: str | None = None,
    task: str | None = None,
    distill: str | None = None,
    applied: AppliedPlan | None = None,
) -> ExportReport:
    """Freeze `model` in place and write it to `path`.

    Args:
        model: a model compressed by `apply_plan_` (and perhaps fine-tuned).
        path: the file to write (safetensors).
        model_spec: how `load` rebuilds the uncompressed structure ("zoo:digits",
            "package.module:callable"); without one, `load` needs the model passed in.
        task: the spec of the task the model is evaluated on (`engine.task_spec`: "zoo:digits",
            "data:/abs/train.npz"), if any.
        distill: the distillation loss it was fine-tuned with (an inputs: task's metric
            follows it), if any.
        applied: what `apply_plan_` returned (found on the model when not given).

    Returns:
        The sizes written (compare `payload_bytes` with `predictors.size.size_report`).

    Raises:
        ExportError: the model carries no applied plan, or the file cannot be written (the
            path is a directory, a device or a link; the disk is full): an old file at `path`
            is then left as it was.
    """
    from safetensors.torch import save

    applied = applied or applied_plan_of(model)
    if applied is None:
        raise ExportError("the model carries no applied plan; compress it with apply_plan_ first")
    freeze_(model)
    planned = {n: m for n, m in model.named_modules() if isinstance(m, PlannedLayer)}
    layers: dict[str, dict] = {}
    tensors: dict[str, Tensor] = {}
    payload: set[str] = set()
    owners: dict[int, str] = {}  # weight source → the first layer holding it
    for name, layer in planned.items():
        owner = owners.setdefault(id(layer.weight_source), name)
        if owner != name:  # tied to `owner`: its structure only, the weight is stored there
            layers[name] = {**_layer_record(layer)[0], "tied_to": owner}
            del layers[name]["weights"]
            continue
        layers[name], own = _layer_record(layer)
        for key, tensor in own.items():
            tensors[f"{name}.{_SOURCE}.{key}"] = tensor.contiguous()
            payload.add(f"{name}.{_SOURCE}.{key}")
    method_sources = {f"{n}.{_SOURCE}." for n, m in planned.items() if m.method != "none"}
    param_ids = {id(p) for p in model.parameters()}
    extra: list[str] = []
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if any(key.startswith(prefix) for prefix in method_sources):
            continue  # stored by the unit above
        if id(value) in seen:  # tied weights are stored once
            aliases[key] = seen[id(value)]
            continue
        seen[id(value)] = key
        tensors[key] = value.detach().cpu().contiguous().clone()
        if ".act_quant." in f".{key}" or ".out_quant." in f".{key}" or id(value) not in param_ids:
            extra.append(key)
    metadata = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_spec": model_spec,
        "task": task,
        "distill": distill,
        "input_shape": list(applied.input_shape),
        "input_dtype": applied.input_dtype,
        "plan": applied.plan.to_dict(),
        "keeps": {str(g): k for g, k in applied.keeps.items()},
        "layers": layers,
        "extra": extra,
        "aliases": aliases,
    }
    # The checksum is over the metadata as `load` will read it back (tuples become lists).
    metadata["sha256"] = _digest(tensors, json.loads(json.dumps(metadata)))
    data = save(tensors, metadata={_META_KEY: json.dumps(metadata)})
    path = Path(path)
    try:
        write_atomically(path, data, what="the exported model")
    except OutputFileError as error:
        raise ExportError(str(error)) from None
    nbytes = {k: t.numel() * t.element_size() for k, t in tensors.items()}
    extra_bytes = sum(nbytes[k] for k in extra)
    return ExportReport(
        path=path,
        file_bytes=len(data),
        payload_bytes=sum(nbytes.values()) - extra_bytes,
        extra_bytes=extra_bytes,
        packed_tensors=sum(t.dtype == torch.uint8 for k, t in tensors.items() if k in payload),
    )


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of an exported file (its header only; no tensor is read).

    Raises:
        ExportError: the file is missing, not safetensors, not a compplan model, or of a format
            this compplan does not read.
    """
    from safetensors import safe_open

    from search_spaces.input_file import InputFileError, check_input_file

    try:
        path = check_input_file(path, "model file")
    except InputFileError as error:
        raise ExportError(str(error)) from None
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
    except Exception as error:
        raise ExportError(f"{path} is not a readable safetensors file ({error})") from None
    if raw is None:
        raise ExportError(f"{path} is a safetensors file but not a compplan model (no metadata)")
    meta = metadata_document(raw, path)
    if meta.get("format") != FORMAT or not _is_int(meta.get("version")):
        raise ExportError(f"{path}: not a compplan model file (format {meta.get('format')!r})")
    if meta["version"] > FORMAT_VERSION:
        raise ExportError(f"{path}: format version {meta['version']} is newer; upgrade compplan")
    if meta["version"] < _OLDEST_VERSION:
        # Format 1 stored every weight kind in one layout; its plan still reads (schema 1).
        raise ExportError(
            f"{path} was written by an older compplan (model file format {meta['version']}; this "
            f"one reads {_OLDEST_VERSION} to {FORMAT_VERSION}): apply its plan again with "
            "`compplan apply --plan PLAN` (plan files of the old schema still load)"
        )
    missing = _REQUIRED_KEYS - set(meta)
    if missing:
        raise ExportError(f"{path}: its compplan metadata is damaged (missing {sorted(missing)})")
    _input_shape(meta, f"{path} is damaged")  # every reader builds inputs of it: bounded first
    return meta


def metadata_document(raw: str, path: str | Path) -> dict:
    """The JSON object a file's compplan metadata holds (within the input limits).

    Raises:
        ExportError: it is not a JSON object.
    """
    from search_spaces.input_file import InputFileError, parse_json

    try:
        meta = parse_json(raw)
    except InputFileError:
        meta = None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: its compplan metadata is damaged")
    return meta


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _declared_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's (safetensors dtype, shape) as the file's header declares them; no data is
    read. safetensors has checked that each one's bytes lie inside the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            declared = {}
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                view = handle.get_slice(key)
                declared[key] = (view.get_dtype(), tuple(view.get_shape()))
    except Exception as error:
        raise ExportError(f"{path} is damaged ({error})") from None
    return declared


def _input_shape(meta: Mapping[str, Any], damaged: str) -> tuple[int, ...]:
    """The recorded input shape, checked before anything of that shape is allocated.

    Raises:
        ExportError: it is not positive integers, or has more than `_MAX_INPUT_ELEMENTS`.
    """
    shape = meta["input_shape"]
    if not isinstance(shape, list) or not shape or not all(_is_int(v) and v > 0 for v in shape):
        raise ExportError(f"{damaged}: its input shape {shape!r} is not positive integers")
    if math.prod(shape) > _MAX_INPUT_ELEMENTS:
        raise ExportError(
            f"{damaged}: its input shape {shape} has {math.prod(shape)} elements, more than "
            f"the {_MAX_INPUT_ELEMENTS} of any example input"
        )
    return tuple(shape)


def example_inputs(meta: Mapping[str, Any], damaged: str) -> tuple[Tensor, ...]:
    """Zeros of the recorded input shape (`_input_shape`) and dtype, to trace the structure.

    Raises:
        ExportError: the shape is refused, or the dtype is not a torch dtype.
    """
    shape = _input_shape(meta, damaged)
    dtype = getattr(torch, str(meta.get("input_dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise ExportError(f"{damaged}: its input dtype {meta.get('input_dtype')!r} is not a dtype")
    return (torch.zeros(shape, dtype=dtype),)  # zeros are valid token ids too


def _checked_plan(
    meta: Mapping[str, Any], graph: ModelGraph, damaged: str
) -> tuple[Plan, dict[int, float]]:
    """The recorded plan and its keep ratio per coupling group, once the plan is known to fit
    the structure `graph` describes, its keeps to be the recorded ones, and its compressed
    layers to be the ones the file records.

    Raises:
        ExportError: it does not (a plan that does not parse or fit names its layer and field).
    """
    try:
        plan = Plan.from_dict(meta["plan"])
    except PlanError as error:
        raise ExportError(f"{damaged}: its plan is invalid ({error})") from None
    if plan.fingerprint and plan.fingerprint != graph.fingerprint:
        raise ExportError("the file was exported from another model than the one given")
    try:
        validate_plan(plan, graph)
        keeps = group_keeps(plan, graph)
    except PlanError as error:
        raise ExportError(f"{damaged}: its plan does not fit the model ({error})") from None
    recorded = meta["keeps"]
    if not isinstance(recorded, dict) or {str(g): k for g, k in keeps.items()} != recorded:
        raise ExportError(f"{damaged}: it records the keeps {recorded}, its plan gives {keeps}")
    # apply_plan_ replaces a layer when its plan sets its weights or its activations.
    compressed = {n for n, lp in plan.layers.items() if lp.method != "none" or lp.activations}
    compressed |= {tied for name in compressed for tied in graph.layers[name].tied}
    layers = meta["layers"]
    if not isinstance(layers, dict):
        raise ExportError(f"{damaged}: its layer records are not a JSON object")
    unplanned, missing = sorted(set(layers) - compressed), sorted(compressed - set(layers))
    if unplanned:
        raise ExportError(
            f"{damaged}: it records layer {unplanned[0]}, which its plan leaves as is"
        )
    if missing:
        raise ExportError(f"{damaged}: its plan compresses layer {missing[0]}, which it lacks")
    return plan, keeps


def _check_layer(
    name: str,
    record: Mapping[str, Any],
    layer_plan: LayerPlan,
    module: nn.Module,
    declared: Mapping[str, tuple[str, tuple[int, ...]]],
    damaged: str,
) -> None:
    """Check a planned layer's record before anything it names is built.

    Args:
        name: the layer.
        record: its metadata (`_layer_record`'s).
        layer_plan: what the recorded plan says of it.
        module: the layer of the structure, pruned as the plan says (a Conv1d, Conv2d, Linear).
        declared: the file's tensors, as its header declares them (`_declared_tensors`).
        damaged: how a message names the file ("m.cpz is damaged").

    Raises:
        ExportError: one line naming the layer and the fact that disagrees with the plan or
            the structure: its kind, geometry, bias or activation config; its weight's method
            or shape; and, for a unit's weight, `_check_unit_weights`'s.
    """

    def refuse(what: str) -> ExportError:
        return ExportError(f"{damaged}: layer {name} {what}")

    if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear | nn.Embedding):
        raise refuse(f"is a planned layer, the model's is a {type(module).__name__}")
    # What apply_plan_ would record of this layer (the bias is a clone: the model's size).
    probe = PlannedLayer.replacing(module, nn.Identity())
    geometry = json.loads(json.dumps(probe.geometry))  # as JSON reads it back: lists
    if record["kind"] != probe.kind:
        raise refuse(f"records a {record['kind']!r} layer, the model's is a {probe.kind}")
    if record["geometry"] != geometry:
        raise refuse(f"records the geometry {record['geometry']}, the model's is {geometry}")
    has_bias = getattr(module, "bias", None) is not None
    if record["bias"] != has_bias:
        has = "a bias" if has_bias else "none"
        raise refuse(f"records bias {record['bias']!r}, the model's layer has {has}")
    activations = None if layer_plan.activations is None else layer_plan.activations.to_dict()
    if record["activations"] != activations:
        raise refuse(f"records the activations {record['activations']}, its plan {activations}")
    weights = record["weights"]
    if not isinstance(weights, dict) or weights.get("method") != layer_plan.method:
        method = weights.get("method") if isinstance(weights, dict) else weights
        raise refuse(f"records the weight method {method!r}, its plan {layer_plan.method!r}")
    # A dense weight is rebuilt from its shape; a unit's "shape", when it records one, too.
    shape = list(module.weight.shape)
    if (layer_plan.weights is None or "shape" in weights) and weights.get("shape") != shape:
        raise refuse(f"records the weight shape {weights.get('shape')}, the model's is {shape}")
    if layer_plan.weights is not None:
        _check_unit_weights(weights, layer_plan.weights, shape, _tensors_of(name, declared), refuse)


def _tensors_of(
    name: str, declared: Mapping[str, tuple[str, tuple[int, ...]]]
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The declared tensors under a layer's weight source, by their name there."""
    prefix = f"{name}.{_SOURCE}."
    return {k[len(prefix) :]: v for k, v in declared.items() if k.startswith(prefix)}


def _integers(value: Any) -> Iterator[int]:
    """Every integer in a JSON value (lists and objects searched)."""
    if _is_int(value):
        yield value
    elif isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _integers(item)


def _check_unit_weights(
    facts: Mapping[str, Any],
    config: WeightConfig,
    shape: list[int],
    tensors: Mapping[str, tuple[str, tuple[int, ...]]],
    refuse: Callable[[str], ExportError],
) -> None:
    """Check the facts a unit recorded of a weight (`export_tensors`'), and its tensors' sizes,
    against what its plan config implies for a weight of `shape`, through the unit's own size
    model (`to_columns`, `facts`, `bits`), so that no kind is named here.

    - A fact named like one of the unit's size columns or its `facts` (VQ: m, d_tilde, k_eff;
      b-bit: bits) must be that value.
    - Any other integer it records (VQ's count) is bounded by the layer: at most its N weights
      (or 32, a bit-width); so what a unit allocates from one is at most the layer's size.
    - The bytes its tensors declare are the bits the unit sizes, up to padding each bit-packed
      (uint8) tensor to whole bytes, as the size convention says.

    Raises:
        the ExportError `refuse(what)` makes, naming the fact.
    """
    unit = weight_method(config.method)
    values = unit.to_columns(config)
    columns = {
        c: np.asarray([v], dtype=np.int64) for c, v in zip(unit.columns, values, strict=True)
    }
    weight_count = math.prod(shape)
    shapes = WeightShapes(
        out_channels=np.asarray([shape[0]], dtype=np.int64),
        row_length=np.asarray([weight_count // shape[0]], dtype=np.int64),
    )
    implied = {c: int(v[0]) for c, v in columns.items()}
    implied |= {k: int(v[0]) for k, v in unit.facts(columns, shapes).items()}
    for key, value in implied.items():
        if key in facts and facts[key] != value:
            raise refuse(
                f"records {key} {facts[key]!r}, its plan ({unit.label(config)}) gives {value}"
            )
    bound = max(weight_count, 32)
    for key, value in facts.items():
        if key not in ("method", "shape") and any(v > bound for v in _integers(value)):
            raise refuse(f"records {key} {value!r}, more than its {weight_count} weights")
    bits = sum(int(v[0]) for v in unit.bits(columns, shapes).values())
    odd = [key for key, (dtype, _) in tensors.items() if dtype not in _DTYPE_BYTES]
    if odd:
        raise refuse(f"holds the weight tensor {odd[0]} of a dtype no unit writes")
    stored = sum(_DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in tensors.values())
    packed = sum(dtype == "U8" for dtype, _ in tensors.values())
    if not 0 <= 8 * stored - bits < max(8 * packed, 1):
        raise refuse(
            f"holds {stored} bytes of weight tensors, its plan ({unit.label(config)}) stores "
            f"{bits} bits"
        )


def _planned_layer(meta: dict, tensors: dict[str, Tensor]) -> PlannedLayer:
    """A layer of the exported structure (its record checked by `_check_layer`): its weight
    from its unit, its quantizer a skeleton."""
    weights = meta["weights"]
    if weights["method"] == "none":
        weight: nn.Module = DenseWeight(torch.zeros(weights["shape"]))
    else:
        weight = weight_method(weights["method"]).load_source(weights, tensors)
    act_config, act = None, None
    if meta["activations"] is not None:
        settings = dict(meta["activations"])
        unit = activation_method(settings.pop("method"))
        act_config = unit.config_type.from_dict(settings)
        act = unit.skeleton(act_config)
    geometry = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["geometry"].items()}
    bias = torch.zeros(weight().shape[0]) if meta["bias"] else None
    layer = PlannedLayer(
        meta["kind"], weight, bias, geometry, act, method=weights["method"], act_config=act_config
    )
    if meta.get("post_batchnorm") is not None:  # values come with the rest of the state
        channels = weight().shape[0]
        layer.post = FoldedBatchNorm(torch.zeros(channels), torch.zeros(channels))
        layer.merged_batchnorm = meta["post_batchnorm"]
    if meta.get("output") is not None:
        settings = dict(meta["output"])
        unit = activation_method(settings.pop("method"))
        layer.out_config = unit.config_type.from_dict(settings)
        layer.out_quant = unit.skeleton(layer.out_config)
    return layer


def _tied_layer(record: dict, model: nn.Module) -> PlannedLayer:
    """A layer tied to an earlier planned layer: its own structure and bias, the owner's very
    weight source (its bias values come with the rest of the state)."""
    owner = model.get_submodule(record["tied_to"])
    geometry = {k: tuple(v) if isinstance(v, list) else v for k, v in record["geometry"].items()}
    bias = torch.zeros(owner.weight_source().shape[0]) if record["bias"] else None
    return PlannedLayer(record["kind"], owner.weight_source, bias, geometry, method=owner.method)


def _method_of(layers: Mapping[str, Any], name: str) -> str:
    """The weight method a layer record names (a tied layer's: its owner's)."""
    record = layers[name]
    return (
        layers[record["tied_to"]]["weights"]["method"]
        if "tied_to" in record
        else (record["weights"]["method"])
    )


def _prepare_(
    model: nn.Module,
    meta: Mapping[str, Any],
    declared: Mapping[str, tuple[str, tuple[int, ...]]],
    damaged: str,
) -> None:
    """Prune the uncompressed `model` as the recorded plan says, once the plan is known to fit
    it, and check every planned layer's record against the plan and the pruned layer."""
    inputs = example_inputs(meta, damaged)
    split_attention_(model)  # as apply_plan_ did: the planned projections are modules
    graph = discover(model, inputs, model_name=meta.get("model_spec") or "the model")
    plan, keeps = _checked_plan(meta, graph, damaged)
    prune_(model, graph, keeps, inputs)
    for name, record in meta["layers"].items():
        if isinstance(record, dict) and "tied_to" in record:
            owner = record["tied_to"]
            if owner not in graph.layers or name not in graph.layers[owner].tied:
                raise ExportError(
                    f"{damaged}: layer {name} records a tie to {owner!r}, which "
                    "the model does not have"
                )
            continue
        _check_layer(name, record, plan.get(name), model.get_submodule(name), declared, damaged)


def _read_tensors(path: Path, meta: Mapping[str, Any]) -> dict[str, Tensor]:
    """The file's tensors, once their checksum (over the metadata too, from format 3) holds."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise ExportError(f"{path} is damaged ({error})") from None
    covered = meta if meta["version"] >= 3 else None  # format 2's left the metadata out
    if _digest(tensors, covered) != meta["sha256"]:
        what = "metadata or tensors do" if covered is not None else "tensors do"
        raise ExportError(f"{path} is damaged: its {what} not match their checksum")
    return tensors


def _structure(
    path: Path, meta: Mapping[str, Any], model: nn.Module | None, trust_model_spec: bool
) -> nn.Module:
    """The uncompressed structure: `model`, or the one the file's spec builds (no weights)."""
    from search_spaces.model_spec import load_model

    if model is not None:
        return model
    spec = meta.get("model_spec")
    if not spec:
        raise ExportError(f"{path} records no model spec; pass model= (the uncompressed structure)")
    if not str(spec).startswith("zoo:") and not trust_model_spec:
        # A file must not make us import and run arbitrary code by naming it.
        raise ExportError(
            f"{path} names the model spec {spec!r}, which imports and runs code: pass the "
            "structure (--model SPEC; model= in Python), or --trust-specs "
            "(trust_model_spec=True) if you trust the file"
        )
    # load_model makes example inputs of the shape it is given: check it first.
    shape = _input_shape(meta, f"{path} is damaged")
    return load_model(spec, input_shape=shape, pretrained=False).module


def load(
    path: str | Path, *, model: nn.Module | None = None, trust_model_spec: bool = False
) -> nn.Module:
    """Rebuild an exported model, ready to run (eval mode, deployed form).

    Everything the metadata names is checked against the plan and the structure before it is
    allocated, and the checksum before any weight is rebuilt (the module docstring's order).

    Args:
        path: a file written by `export` (format 2 or 3).
        model: the uncompressed model's structure (any weights). Needed unless the file names a
            zoo model (or `trust_model_spec`). Changed in place and returned.
        trust_model_spec: build the structure from a non-zoo spec recorded in the file, which
            imports and calls code the file names: only for files you trust.

    Raises:
        ExportError: one line: the file is missing, damaged (a size or fact that disagrees with
            its plan or its structure names the layer and the fact), names code it may not run,
            or was exported from another model.
    """
    path = Path(path)
    meta = read_metadata(path)
    declared = _declared_tensors(path)
    damaged = f"{path} is damaged" + (" or not of the model given" if model is not None else "")
    try:
        model = _structure(path, meta, model, trust_model_spec)
        _prepare_(model, meta, declared, damaged)
        tensors = _read_tensors(path, meta)
        for name, record in meta["layers"].items():
            if "tied_to" in record:
                model.set_submodule(name, _tied_layer(record, model))
                continue
            prefix = f"{name}.{_SOURCE}."
            own = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}
            model.set_submodule(name, _planned_layer(record, own))
            merged = record.get("post_batchnorm")
            if merged is not None:  # merged into the layer: its place does nothing
                if not isinstance(model.get_submodule(merged), nn.modules.batchnorm._BatchNorm):
                    raise ExportError(f"{damaged}: layer {name} merges {merged!r}, no BatchNorm")
                model.set_submodule(merged, nn.Identity())
        freeze_(model, merge_int8=False)
        _load_state_(model, meta, tensors, path)
        merge_int8_batchnorms_(model)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, ExportError | PlanError):
            raise
        raise ExportError(f"{path}: its compplan metadata is damaged ({error!r})") from None
    return model.eval()


def _load_state_(
    model: nn.Module, meta: Mapping[str, Any], tensors: Mapping[str, Tensor], path: Path
) -> None:
    """Load the state that is not in the planned layers' weights (those came from their units).

    Raises:
        ExportError: the file misses a tensor of the rebuilt model, has one it lacks, or one of
            another shape.
    """
    sources = tuple(
        f"{n}.{_SOURCE}." for n in meta["layers"] if _method_of(meta["layers"], n) != "none"
    )
    state = {
        key: tensor.float() if tensor.dtype == torch.float16 else tensor
        for key, tensor in tensors.items()
        if not key.startswith(sources)
    }
    for alias, target in meta["aliases"].items():
        state[alias] = state[target]
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise ExportError(
                f"{path} does not fit the rebuilt model (its {key} is {list(tensor.shape)}, the "
                f"model's {list(own[key].shape)})"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith(sources)]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        what = "misses" if missing else "has an unexpected"
        raise ExportError(f"{path} does not fit the rebuilt model (the file {what} {first})")
