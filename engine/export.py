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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.apply import AppliedPlan, applied_plan_of
from engine.layers import DenseWeight, FoldedBatchNorm, PlannedLayer
from engine.pruning import prune_
from search_spaces.discover import discover
from search_spaces.methods import activation_method, weight_method
from search_spaces.plan import Plan, PlanError

__all__ = ["ExportError", "ExportReport", "export", "freeze_", "load", "read_metadata"]

FORMAT = "compplan-model"
# 2: weights stored by their units; layer metadata {"weights": {"method": ...}, "activations"}.
FORMAT_VERSION = 2
_META_KEY = "compplan"
_REQUIRED_KEYS = frozenset({"input_shape", "plan", "keeps", "layers", "extra", "aliases", "sha256"})
_SOURCE = "weight_source"


def _digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes: damage anywhere shows."""
    digest = hashlib.sha256()
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


def freeze_(model: nn.Module) -> nn.Module:
    """Put `model` in its deployed form, in place: each weight source in its unit's frozen form
    (b-bit: integer levels), folded BatchNorms, eval mode.

    Idempotent. Training after freezing trains the folded scales and shifts, not BatchNorms.
    """
    model.eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, PlannedLayer) and module.method != "none":
            module.weight_source = weight_method(module.method).frozen(module.weight_source)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            model.set_submodule(name, FoldedBatchNorm.of(module))
    return model


def _layer_record(layer: PlannedLayer) -> tuple[dict, dict[str, Tensor]]:
    """(the layer's metadata, its weight's payload tensors by name under the weight source)."""
    meta: dict = {
        "kind": layer.kind,
        "geometry": layer.geometry,
        "bias": layer.bias is not None,
        "activations": None if layer.act_config is None else layer.act_config.to_dict(),
    }
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
    """
    from safetensors.torch import save_file

    applied = applied or applied_plan_of(model)
    if applied is None:
        raise ExportError("the model carries no applied plan; compress it with apply_plan_ first")
    freeze_(model)
    planned = {n: m for n, m in model.named_modules() if isinstance(m, PlannedLayer)}
    layers: dict[str, dict] = {}
    tensors: dict[str, Tensor] = {}
    payload: set[str] = set()
    for name, layer in planned.items():
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
        if ".act_quant." in f".{key}" or id(value) not in param_ids:
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
        "sha256": _digest(tensors),
    }
    path = Path(path)
    save_file(tensors, str(path), metadata={_META_KEY: json.dumps(metadata)})
    nbytes = {k: t.numel() * t.element_size() for k, t in tensors.items()}
    extra_bytes = sum(nbytes[k] for k in extra)
    return ExportReport(
        path=path,
        file_bytes=path.stat().st_size,
        payload_bytes=sum(nbytes.values()) - extra_bytes,
        extra_bytes=extra_bytes,
        packed_tensors=sum(t.dtype == torch.uint8 for k, t in tensors.items() if k in payload),
    )


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of an exported file.

    Raises:
        ExportError: the file is missing, not safetensors, or not a compplan model.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory, not a model file")
    if not path.is_file():
        raise ExportError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
    except Exception as error:
        raise ExportError(f"{path} is not a readable safetensors file ({error})") from None
    if raw is None:
        raise ExportError(f"{path} is a safetensors file but not a compplan model (no metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: its compplan metadata is damaged")
    if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
        raise ExportError(f"{path}: not a compplan model file (format {meta.get('format')!r})")
    if meta["version"] > FORMAT_VERSION:
        raise ExportError(f"{path}: format version {meta['version']} is newer; upgrade compplan")
    if meta["version"] < FORMAT_VERSION:
        # Format 1 stored every weight kind in one layout; its plan still reads (schema 1).
        raise ExportError(
            f"{path} was written by an older compplan (model file format {meta['version']}; this "
            f"one reads {FORMAT_VERSION}): apply its plan again with `compplan apply --plan "
            "PLAN` (plan files of the old schema still load)"
        )
    missing = _REQUIRED_KEYS - set(meta)
    if missing:
        raise ExportError(f"{path}: its compplan metadata is damaged (missing {sorted(missing)})")
    return meta


def _planned_layer(meta: dict, tensors: dict[str, Tensor]) -> PlannedLayer:
    """A layer of the exported structure: its weight from its unit, its quantizer a skeleton."""
    weights = meta["weights"]
    shape = tuple(weights["shape"]) if "shape" in weights else None
    if weights["method"] == "none":
        weight: nn.Module = DenseWeight(torch.zeros(shape))
    else:
        weight = weight_method(weights["method"]).load_source(weights, tensors)
    act_config, act = None, None
    if meta["activations"] is not None:
        settings = dict(meta["activations"])
        unit = activation_method(settings.pop("method"))
        act_config = unit.config_type.from_dict(settings)
        act = unit.skeleton(act_config)
    geometry = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["geometry"].items()}
    out_channels = weight().shape[0]
    bias = torch.zeros(out_channels) if meta["bias"] else None
    return PlannedLayer(
        meta["kind"], weight, bias, geometry, act, method=weights["method"], act_config=act_config
    )


def _rebuild_(
    model: nn.Module, meta: dict, shape: tuple[int, ...], tensors: dict[str, Tensor]
) -> None:
    """Give the uncompressed `model` the exported structure: pruned, planned layers, folded."""
    dtype = getattr(torch, str(meta.get("input_dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise ExportError(f"its input dtype {meta.get('input_dtype')!r} is not a torch dtype")
    inputs = (torch.zeros(shape, dtype=dtype),)  # zeros are valid token ids too
    plan = Plan.from_dict(meta["plan"])
    graph = discover(model, inputs, model_name=meta.get("model_spec") or "the model")
    if plan.fingerprint and plan.fingerprint != graph.fingerprint:
        raise ExportError("the file was exported from another model than the one given")
    prune_(model, graph, {int(g): k for g, k in meta["keeps"].items()}, inputs)
    for name, layer_meta in meta["layers"].items():
        prefix = f"{name}.{_SOURCE}."
        own = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}
        model.set_submodule(name, _planned_layer(layer_meta, own))
    freeze_(model)


def load(
    path: str | Path, *, model: nn.Module | None = None, trust_model_spec: bool = False
) -> nn.Module:
    """Rebuild an exported model, ready to run (eval mode, deployed form).

    Args:
        path: a file written by `export`.
        model: the uncompressed model's structure (any weights). Needed unless the file names a
            zoo model (or `trust_model_spec`). Changed in place and returned.
        trust_model_spec: build the structure from a non-zoo spec recorded in the file, which
            imports and calls code the file names: only for files you trust.

    Raises:
        ExportError: the file is missing, damaged, names code it may not run, or was exported
            from another model.
    """
    from safetensors.torch import load_file

    from search_spaces.model_spec import load_model

    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise ExportError(f"{path} is damaged ({error})") from None
    if _digest(tensors) != meta["sha256"]:
        raise ExportError(f"{path} is damaged: its tensors do not match their checksum")
    spec = meta.get("model_spec")
    if model is None:
        if not spec:
            raise ExportError(
                f"{path} records no model spec; pass model= (the uncompressed structure)"
            )
        if not str(spec).startswith("zoo:") and not trust_model_spec:
            # A file must not make us import and run arbitrary code by naming it.
            raise ExportError(
                f"{path} names the model spec {spec!r}, which imports and runs code: pass the "
                "structure (--model SPEC; model= in Python), or --trust-specs "
                "(trust_model_spec=True) if you trust the file"
            )
    try:
        shape = tuple(int(v) for v in meta["input_shape"])
        if model is None:
            model = load_model(spec, input_shape=shape, pretrained=False).module
        _rebuild_(model, meta, shape, tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, ExportError | PlanError):
            raise
        raise ExportError(f"{path}: its compplan metadata is damaged ({error!r})") from None
    # The planned layers' weights came from their units; the rest of the state loads here.
    sources = tuple(
        f"{n}.{_SOURCE}." for n, m in meta["layers"].items() if m["weights"]["method"] != "none"
    )
    state = {
        key: tensor.float() if tensor.dtype == torch.float16 else tensor
        for key, tensor in tensors.items()
        if not key.startswith(sources)
    }
    for alias, target in meta["aliases"].items():
        state[alias] = state[target]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith(sources)]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        what = "misses" if missing else "has an unexpected"
        raise ExportError(f"{path} does not fit the rebuilt model (the file {what} {first})")
    return model.eval()
