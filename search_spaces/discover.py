"""`discover(model, example_inputs)`: read any `nn.Module` into a `ModelGraph`.

Two passes over the model, both with the example inputs:

1. One forward pass with hooks records, for every module with parameters, how often it is called
   and with which activation shapes, and which BatchNorm reads a layer's output directly.
2. Torch-Pruning's `DependencyGraph` traces the autograd graph and yields, for each layer's output
   channels, everything that must be pruned with them (the coupling groups).

Nothing here crashes on an unusual model: what cannot be compressed is listed in `ModelGraph.kept`
with its reason, and a failed dependency trace leaves every group unprunable with the error kept in
`ModelGraph.trace_error`. Only a model that cannot run on its example inputs is an error.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from search_spaces.attention import ineligible_reason, split_attention
from search_spaces.graph import (
    UNNAMED_MODEL,
    CouplingGroup,
    InputTie,
    KeptModule,
    LayerSpec,
    ModelGraph,
)
from search_spaces.graph_cache import cache_key, load_graph, save_graph
from search_spaces.macs import layer_macs

__all__ = ["COMPRESSIBLE_TYPES", "DiscoveryError", "discover", "shared_parameters"]

logger = logging.getLogger("compplan")

COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)
_KIND = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear", nn.Embedding: "embedding"}
# Channel pruning starts from these: an embedding's features are pruned, if ever, with the
# layers that read them, never from the embedding table itself.
_PRUNING_ROOTS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
# Torch-Pruning's pseudo-modules for tensor ops; these carry channels through unchanged or by a
# fixed index map that the size model and the engine understand.
_PASS_THROUGH_OPS = {"_ElementWiseOp", "_ReshapeOp", "_ConcatOp", "_OutputOp"}


class DiscoveryError(ValueError):
    """The model cannot be read at all (it does not run on the example inputs)."""


@dataclass
class _Call:
    count: int = 0
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    follows: list[str] = field(default_factory=list)  # layers whose output this module reads
    returned: bool = False  # its output is (part of) what the model returns


def discover(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    model_name: str = UNNAMED_MODEL,
    cache: bool = True,
) -> ModelGraph:
    """Find every compressible layer of `model`, its facts, and its coupling group.

    The model is run in eval mode with gradients enabled (the dependency trace needs autograd);
    its training flag and parameters are left as they were.

    Args:
        model: any `nn.Module`.
        example_inputs: one tensor, or a tuple of positional inputs, with a batch dimension first.
        model_name: a label for messages and plan files.
        cache: look the graph up in, and add it to, the on-disk cache of discovered graphs
            (`search_spaces.graph_cache`: keyed by the model's structure, its classes' source
            and the inputs' shapes, so a model changed in any of them is discovered again).

    Returns:
        The model's `ModelGraph`.

    Raises:
        DiscoveryError: the model has no parameters, or does not run on `example_inputs`.
    """
    if not any(True for _ in model.parameters()):
        raise DiscoveryError(
            f"{model_name} has no parameters: nothing to compress (check that the spec returns "
            "the trained model, with its layers)"
        )
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() > 0 else 1
    key = cache_key(model, inputs) if cache else None
    if (cached := load_graph(key, model_name)) is not None:
        if cached.trace_error:
            _warn_trace_failed(model_name, cached.trace_error)
        return cached
    was_training = model.training
    model.eval()
    # Attention's projections become layers of their own for as long as discovery runs.
    with split_attention(model):
        try:
            layers, kept, groups, trace_error = _read(model, inputs, batch, model_name)
        finally:
            model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    graph = ModelGraph(
        model_name=model_name,
        layers=layers,
        kept=tuple(kept),
        groups=groups,
        total_params=total,
        trace_error=trace_error,
    )
    accounted = graph.compressible_params + graph.batchnorm_params + graph.kept_params
    assert accounted == total, f"parameter accounting is off: {accounted} != {total}"
    save_graph(key, graph)
    return graph


def _read(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int, model_name: str
) -> tuple[dict[str, LayerSpec], list[KeptModule], tuple[CouplingGroup, ...], str]:
    """(layers, kept modules, coupling groups, the trace's error or "") of a model in eval mode."""
    calls = _record_calls(model, inputs)
    layers, kept = _classify(model, calls, batch)
    # Pruning a layer whose output the model returns (directly or through its BatchNorm)
    # would change the model's outputs.
    returned = {
        name
        for name, spec in layers.items()
        if calls[name].returned or (spec.batchnorm and calls[spec.batchnorm].returned)
    }
    try:
        groups, layers = _couple(model, inputs, layers, kept, returned)
        return layers, kept, groups, ""
    except Exception as error:  # any failure of a third-party tracer must not stop discovery
        trace_error = f"{type(error).__name__}: {error}".splitlines()[0]
        _warn_trace_failed(model_name, trace_error)
        return layers, kept, (), trace_error


def _warn_trace_failed(model_name: str, trace_error: str) -> None:
    _warn_once(
        f"channel pruning is off for {model_name}: the dependency trace failed "
        f"({trace_error}); sizes, quantization and the search work as usual"
    )


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a warning the first time this process meets it: a command discovers its model more
    than once (planning, applying, exporting), and a user needs to read it once."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _record_calls(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, _Call]:
    """Run one forward pass and note each interesting module's calls and activation shapes."""
    calls: dict[str, _Call] = {}
    producer_of: dict[int, str] = {}  # id(output tensor) → module name
    keep_alive: list[torch.Tensor] = []  # outputs stay referenced so that their ids stay unique

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            call = calls.setdefault(name, _Call())
            call.count += 1
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is not None:
                call.input_shape = tuple(first.shape)
                if id(first) in producer_of:
                    call.follows.append(producer_of[id(first)])
            if isinstance(output, torch.Tensor):
                call.output_shape = tuple(output.shape)
                producer_of[id(output)] = name
                keep_alive.append(output)

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, COMPRESSIBLE_TYPES + _BATCHNORM_TYPES)
    ]
    linears = {
        id(module.weight): name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }
    try:
        with torch.no_grad(), _FunctionalLinears(linears, calls):
            result = model(*inputs)
        for tensor in _tensors_in(result):
            if id(tensor) in producer_of:
                calls[producer_of[id(tensor)]].returned = True
    except Exception as error:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise DiscoveryError(
            f"the model does not run on example inputs of shape {shapes} "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "pass --input-shape matching what the model expects"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return calls


class _FunctionalLinears(TorchFunctionMode):
    """Notes each `F.linear` whose weight is an `nn.Linear`'s, as a call of that Linear (under
    the key "functional:<name>"): a parent that reads its child's weight and calls `F.linear`
    itself (as MultiheadAttention does with `out_proj`) still uses a Linear a plan can compress,
    since a planned layer's `weight` is its decoded weight."""

    def __init__(self, linears: dict[int, str], calls: dict[str, _Call]):
        super().__init__()
        self.linears, self.calls = linears, calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if getattr(func, "__name__", "") == "linear" and id(weight) in self.linears:
            call = self.calls.setdefault(f"functional:{self.linears[id(weight)]}", _Call())
            call.count += 1
            if isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                call.input_shape, call.output_shape = tuple(args[0].shape), tuple(output.shape)
        return output


def _tensors_in(value: object) -> list[torch.Tensor]:
    """The tensors in a model's output: a tensor, or tuples, lists and dicts of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors_in(item)]
    return []


def _own_params(module: nn.Module, seen: set[int]) -> int:
    """Elements of the parameters registered directly on `module`, each tensor counted once."""
    total = 0
    for param in module.parameters(recurse=False):
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def _classify(
    model: nn.Module, calls: dict[str, _Call], batch: int
) -> tuple[dict[str, LayerSpec], list[KeptModule]]:
    """Sort modules with parameters into compressible layers, attached BatchNorms and kept ones."""
    seen: set[int] = set()
    shared = shared_parameters(model)
    ties = _weight_ties(model, calls, shared)
    tied_to = {tied: owner for owner, names in ties.items() for tied in names}
    candidates: dict[str, LayerSpec] = {}
    kept: list[KeptModule] = []
    batchnorms: list[tuple[str, nn.Module, int]] = []
    parent_of = _parents(model)
    for name, module in model.named_modules():
        params = _own_params(module, seen)
        if isinstance(module, _BATCHNORM_TYPES):
            batchnorms.append((name, module, params))
            continue
        if name in tied_to and tied_to[name] in candidates:
            why = f"its weight is tied to '{tied_to[name]}': compressed there, counted once"
            kept.append(KeptModule(name, type(module).__name__, params, why))
            continue
        if params == 0:
            continue
        # An owner of tied weights is compressible as any layer; the modules tied to it follow.
        untied = shared - {id(module.weight)} if name in ties else shared
        call = calls.get(name)
        functional = (call is None or call.count == 0) and f"functional:{name}" in calls
        if functional:  # its parent calls F.linear on its weight: no input quantizer runs
            call = calls[name] = calls[f"functional:{name}"]
        reason = _why_not_compressible(name, module, call, untied, parent_of)
        if reason:
            kept.append(KeptModule(name, type(module).__name__, params, reason))
            continue
        call = calls[name]
        weight = module.weight
        candidates[name] = LayerSpec(
            name=name,
            kind=_kind_of(module),
            weight_shape=tuple(weight.shape),
            groups=getattr(module, "groups", 1) if not isinstance(module, nn.Embedding) else 1,
            has_bias=getattr(module, "bias", None) is not None,
            input_shape=call.input_shape,
            output_shape=call.output_shape,
            macs=_macs(module, call, batch),
            params=params,
            # An embedding's inputs are token ids: there is nothing to quantize.
            quantizable_inputs=not isinstance(module, nn.Embedding)
            and not functional
            and not _inside_fast_path_layer(model, name, parent_of),
            tied=ties.get(name, ()),
        )
    order: dict[str, int] = {}  # hooks fire in execution order
    for i, key in enumerate(calls):
        order.setdefault(key.removeprefix("functional:"), i)
    layers = dict(sorted(candidates.items(), key=lambda item: order[item[0]]))
    for name, module, params in batchnorms:
        call = calls.get(name)
        owner = call.follows[0] if call and len(call.follows) == 1 and call.count == 1 else None
        if (
            owner in layers
            and layers[owner].batchnorm is None
            and params in (0, 2 * module.num_features)
        ):
            layers[owner] = replace(layers[owner], batchnorm=name, batchnorm_params=params)
        else:
            why = "BatchNorm that does not directly follow a compressible layer"
            bits = 64 * module.num_features  # exported folded: a scale and a shift per channel
            kept.append(KeptModule(name, type(module).__name__, params, why, bits))
    return layers, kept


def _kind_of(module: nn.Module) -> str:
    for cls, kind in _KIND.items():
        if isinstance(module, cls):
            return kind
    raise TypeError(type(module).__name__)


def _inside_fast_path_layer(model: nn.Module, name: str, parent_of: dict[str, str]) -> bool:
    """Whether `name` sits in a Transformer layer whose inference fast path bypasses it."""
    fast = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    while name in parent_of:
        name = parent_of[name]
        if isinstance(model.get_submodule(name), fast):
            return True
    return False


def _parents(model: nn.Module) -> dict[str, str]:
    return {
        f"{parent}.{child}" if parent else child: parent
        for parent, module in model.named_modules()
        for child, _ in module.named_children()
    }


def _weight_ties(model: nn.Module, calls: dict[str, _Call], shared: set[int]) -> dict[str, tuple]:
    """Tied weights compplan compresses once: owner → the modules whose `weight` is the owner's.

    A tie qualifies when every module sharing the weight is a Linear or an Embedding called once
    per forward pass and shares nothing else (an input embedding and an output projection, as
    language models tie them). The owner is the first in `named_modules` order, where the
    weight's elements are counted.
    """
    sharers: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and id(weight) in shared:
            sharers.setdefault(id(weight), []).append((name, module))
    ties = {}
    for modules in sharers.values():
        if len(modules) > 1 and all(
            isinstance(module, nn.Linear | nn.Embedding)
            and getattr(calls.get(name), "count", 0) == 1
            and id(module._parameters.get("bias")) not in shared
            for name, module in modules
        ):
            ties[modules[0][0]] = tuple(name for name, _ in modules[1:])
    return ties


def shared_parameters(model: nn.Module) -> set[int]:
    """ids of parameters registered on more than one module (tied weights)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return {pid for pid, count in owners.items() if count > 1}


def _why_not_compressible(
    name: str,
    module: nn.Module,
    call: _Call | None,
    shared: set[int],
    parent_of: dict[str, str],
) -> str:
    """Why a module with parameters is kept as is; "" when it is a compressible layer."""
    cls = type(module).__name__
    if not isinstance(module, COMPRESSIBLE_TYPES):
        raw = [n for n, p in module.named_parameters(recurse=False) if n not in ("weight", "bias")]
        if isinstance(module, nn.MultiheadAttention):
            why = ineligible_reason(module) or "a subclass compplan does not know"
            return f"{cls} whose projections compplan cannot split: {why}; kept at 32 bits"
        if raw:
            what = ", ".join(f"'{n}'" for n in raw)
            return f"{cls} uses raw weight Parameter {what} functionally; kept at 32 bits"
        return f"{cls} is not a layer type compplan compresses (Conv1d, Conv2d, Linear, Embedding)"
    extra = [n for n, _ in module.named_parameters(recurse=False) if n not in ("weight", "bias")]
    if extra:
        return f"{cls} subclass with extra parameters {extra}; kept at 32 bits"
    if call is None or call.count == 0:
        parent = parent_of.get(name, "")
        owner = f"its parent '{parent}'" if parent else "the model"
        return f"not called as a module in the forward pass ({owner} uses its weights directly)"
    if call.count > 1:
        return f"called {call.count} times per forward pass (a shared layer); kept at 32 bits"
    if any(id(p) in shared for p in module.parameters(recurse=False)):
        return "its weight is tied to another module's; kept at 32 bits"
    if isinstance(module, nn.Conv1d | nn.Conv2d) and module.padding_mode not in ("zeros",):
        return f"padding_mode={module.padding_mode!r} is not supported; kept at 32 bits"
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        # max_norm renormalises rows of the weight in place on every lookup.
        return "Embedding with max_norm rewrites its weight on lookup; kept at 32 bits"
    return ""


def _macs(module: nn.Module, call: _Call, batch: int) -> int:
    """Multiply-accumulates per example (`layer_macs`), from the recorded output shape; an
    embedding lookup counts one per element it copies out."""
    weight = module.weight
    if isinstance(module, nn.Embedding):
        return math.prod(call.output_shape) // max(batch, 1)
    per_example = math.prod(call.output_shape) // max(batch, 1)
    groups = 1 if isinstance(module, nn.Linear) else module.groups
    return layer_macs(
        c_out=weight.shape[0],
        c_in=weight.shape[1] * groups,
        groups=groups,
        kernel=math.prod(weight.shape[2:]),
        out_spatial=per_example // weight.shape[0],
    )


def _couple(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    layers: dict[str, LayerSpec],
    kept: list[KeptModule],
    returned: set[str],
) -> tuple[tuple[CouplingGroup, ...], dict[str, LayerSpec]]:
    """Coupling groups from Torch-Pruning's dependency graph; layers get their group and inputs."""
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    kept_names = {module.name for module in kept}
    with torch.enable_grad(), contextlib.redirect_stdout(_NullWriter()):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=inputs if len(inputs) > 1 else inputs[0], verbose=False
        )
    groups: list[CouplingGroup] = []
    out_group: dict[str, int] = {}
    ties: dict[str, list[InputTie]] = {name: [] for name in layers}
    for tp_group in graph.get_all_groups(root_module_types=_PRUNING_ROOTS):
        gid = len(groups)
        _, root_idxs = tp_group[0]
        channels = len(root_idxs)
        members: list[str] = []
        consumers: list[tuple[str, int]] = []
        problems: list[str] = []
        for dep, idxs in tp_group:
            module = dep.target.module
            name = names.get(module)
            is_out = graph.is_out_channel_pruning_fn(dep.handler)
            cls = type(module).__name__
            if name is None or (
                not isinstance(module, COMPRESSIBLE_TYPES + _BATCHNORM_TYPES) and name in kept_names
            ):
                if cls not in _PASS_THROUGH_OPS and name is None:
                    problems.append(
                        f"coupled through a {cls.strip('_')} that compplan cannot prune"
                    )
                elif name is not None:
                    problems.append(f"coupled to {cls} '{name}', which compplan cannot prune")
                continue
            if isinstance(module, _BATCHNORM_TYPES):
                if name in kept_names:
                    problems.append(f"coupled to BatchNorm '{name}', which is kept as is")
                continue
            if name not in layers:
                problems.append(f"coupled to '{name}', which is kept as is")
                continue
            if isinstance(module, nn.Embedding):
                problems.append(f"coupled to the features of embedding '{name}'")
                continue
            spec = layers[name]
            if spec.tied:  # pruning one would cut the weight the others read
                problems.append(f"'{name}' shares its weight with '{spec.tied[0]}'")
            if spec.groups > 1 and not spec.is_depthwise:
                problems.append(f"coupled to grouped conv '{name}' (groups={spec.groups})")
            if is_out:
                if name not in members:
                    members.append(name)
                if spec.is_depthwise:
                    consumers.append((name, 1))  # a depthwise conv's inputs are its outputs
            elif not spec.is_depthwise:
                consumers.append((name, max(1, len(idxs) // max(channels, 1))))
        consumer_names = tuple(dict.fromkeys(n for n, _ in consumers if n not in members))
        if (not consumer_names or returned.intersection(members)) and not problems:
            problems.append("its channels are part of the model's output")
        if any(layers[n].out_channels != channels for n in members):
            problems.append("members disagree on the channel count")
        groups.append(
            CouplingGroup(
                id=gid,
                channels=channels,
                layers=tuple(members),
                consumers=consumer_names,
                prunable=not problems,
                reason=problems[0] if problems else "",
            )
        )
        for name in members:
            out_group.setdefault(name, gid)
        for name, multiplicity in dict.fromkeys(consumers):
            if all(t.group != gid for t in ties[name]):
                ties[name].append(InputTie(gid, multiplicity))
    updated = {
        name: replace(spec, group=out_group.get(name), inputs=tuple(ties[name]))
        for name, spec in layers.items()
    }
    return tuple(groups), updated


class _NullWriter:
    """Swallows Torch-Pruning's prints, which would interleave with the CLI's tables."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
