"""The model as compplan sees it: compressible layers, what is kept as is, and coupling groups.

A `ModelGraph` is built once by `search_spaces.discover()` and is read-only afterwards. Everything
downstream (knob validity, the size predictor, plan validation, the engine) reads layer facts from
here and never from the `nn.Module` again, so a graph can be saved as JSON and compared across runs.

Channel pruning changes a layer's output channels together with everything tied to them: the
BatchNorm that follows, the layers joined by a residual add, the depthwise conv that maps channel c
to channel c, and the input channels of every consumer. Such a set is a `CouplingGroup`; a plan
gives it one keep ratio.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

__all__ = ["UNNAMED_MODEL", "CouplingGroup", "InputTie", "KeptModule", "LayerSpec", "ModelGraph"]

# The name of a graph discovered without one (`discover`'s default): latency records and
# predictors name a model by its spec, so an unnamed graph matches none of them.
UNNAMED_MODEL = "model"


@dataclass(frozen=True)
class InputTie:
    """How pruning one coupling group shrinks a layer's input channels.

    Attributes:
        group: id of the coupling group whose channels this layer consumes.
        multiplicity: input channels of this layer per channel of the group (1 for a conv;
            H·W when a Linear reads a flattened feature map).
    """

    group: int
    multiplicity: int


@dataclass(frozen=True)
class LayerSpec:
    """One compressible layer (Conv1d, Conv2d including grouped and depthwise, Linear, Embedding).

    An embedding's weight is its table, one row per token id: weight_shape (num_embeddings,
    embedding_dim), so its rows are what VQ's subvectors and b-bit's per-row scales cut.

    Attributes:
        name: fully qualified module name, as in `model.named_modules()`.
        kind: "conv1d", "conv2d", "linear" or "embedding".
        weight_shape: shape of `weight`: (C_out, C_in/groups, *kernel) or (out, in).
        groups: conv groups (1 for Linear).
        has_bias: whether the layer has a bias.
        input_shape, output_shape: activation shapes for the example inputs (batch included).
        macs: multiply-accumulates per example (the batch dimension divided out).
        params: weight and bias elements.
        batchnorm: name of the BatchNorm reading this layer's output directly, or None.
        batchnorm_params: that BatchNorm's weight and bias elements (0 without one).
        group: id of the coupling group holding this layer's output channels, or None.
        inputs: the coupling groups that shrink this layer's input channels when pruned.
        quantizable_inputs: whether an activation quantizer in front of it would run: False
            inside a `TransformerEncoderLayer`/`DecoderLayer`, whose inference fast path reads
            the weights and never calls the module (so the space offers only 32-bit inputs).
        tied: modules whose weight is this layer's own Parameter (an output projection tied to
            an input embedding): they use its compressed weight, which is stored and counted
            once, here; each is listed in `ModelGraph.kept` at the cost of its bias alone.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    groups: int
    has_bias: bool
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    batchnorm: str | None = None
    batchnorm_params: int = 0
    group: int | None = None
    inputs: tuple[InputTie, ...] = ()
    quantizable_inputs: bool = True
    tied: tuple[str, ...] = ()

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def in_channels(self) -> int:
        """All input channels (C_in), not the per-group count."""
        return self.weight_shape[1] * self.groups

    @property
    def kernel_elems(self) -> int:
        """K² for a 2-d conv, K for 1-d, 1 for Linear."""
        return math.prod(self.weight_shape[2:])

    @property
    def row_length(self) -> int:
        """D = C_in/groups · K²: the length of one output row, which VQ's m divides."""
        return self.weight_shape[1] * self.kernel_elems

    @property
    def weight_elems(self) -> int:
        """N = C_out · C_in/groups · K²."""
        return math.prod(self.weight_shape)

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclass(frozen=True)
class KeptModule:
    """A module with parameters that compplan leaves as it is, and why.

    It costs `bits` in the baseline and in every compressed size: 32 per parameter, except a
    BatchNorm, which is exported folded to two 32-bit vectors per channel whether or not it has
    affine parameters.
    """

    name: str
    kind: str
    params: int
    reason: str
    bits: int = -1

    def __post_init__(self) -> None:
        if self.bits < 0:
            object.__setattr__(self, "bits", 32 * self.params)


@dataclass(frozen=True)
class CouplingGroup:
    """Layers whose output channels must be pruned together, and one keep ratio for all of them.

    Attributes:
        id: index in `ModelGraph.groups`.
        channels: number of channels in the group (every member has this many output channels).
        layers: compressible layers whose output channels are these channels.
        consumers: compressible layers whose input channels shrink with them.
        prunable: whether compplan may prune this group.
        reason: why not, when `prunable` is False.
    """

    id: int
    channels: int
    layers: tuple[str, ...]
    consumers: tuple[str, ...]
    prunable: bool
    reason: str = ""


@dataclass(frozen=True)
class ModelGraph:
    """Everything compplan needs to know about a model, in execution order.

    Attributes:
        model_name: a label for messages and plan files (for example "zoo:resnet18").
        layers: compressible layers in the order the forward pass first calls them.
        kept: modules with parameters that stay as they are, each with its reason.
        groups: coupling groups for channel pruning.
        total_params: every parameter of the model, each shared tensor once.
        trace_error: why the dependency trace failed (then no group is prunable), or "".
    """

    model_name: str
    layers: dict[str, LayerSpec]
    kept: tuple[KeptModule, ...]
    groups: tuple[CouplingGroup, ...]
    total_params: int
    trace_error: str = ""
    _fingerprint: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        shapes = [[n, s.kind, list(s.weight_shape), s.groups] for n, s in self.layers.items()]
        digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
        object.__setattr__(self, "_fingerprint", f"sha256:{digest}")

    @property
    def fingerprint(self) -> str:
        """A digest of the compressible layers' names, kinds, weight shapes and groups.

        A plan records it; a plan whose fingerprint differs was made for another model.
        Activation shapes are left out on purpose: a plan stays valid at another input size.
        """
        return self._fingerprint

    @property
    def pruning_off_reason(self) -> str:
        """Why no coupling group can be pruned ("" when one can): the failed trace, or that the
        model has none that may be."""
        if any(group.prunable for group in self.groups):
            return ""
        if self.trace_error:
            return f"the dependency trace failed ({self.trace_error})"
        if not self.groups:
            return "the model has no coupling group"
        return f"no coupling group may be pruned (group 0: {self.groups[0].reason})"

    @property
    def compressible_params(self) -> int:
        return sum(layer.params for layer in self.layers.values())

    @property
    def batchnorm_params(self) -> int:
        return sum(layer.batchnorm_params for layer in self.layers.values())

    @property
    def kept_params(self) -> int:
        return sum(module.params for module in self.kept)

    @property
    def kept_bits(self) -> int:
        """What the modules kept as is cost, in every plan."""
        return sum(module.bits for module in self.kept)

    @property
    def baseline_bits(self) -> int:
        """Every weight and bias at 32 bits, each BatchNorm as two 32-bit vectors per channel."""
        batchnorms = sum(64 * s.out_channels for s in self.layers.values() if s.batchnorm)
        return 32 * self.compressible_params + batchnorms + self.kept_bits

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers.values())

    @property
    def first_conv(self) -> str | None:
        """The first conv the forward pass calls (every anchor leaves it uncompressed)."""
        return next((n for n, s in self.layers.items() if s.kind.startswith("conv")), None)

    @property
    def classifier(self) -> str | None:
        """The last layer the forward pass calls, when it is a Linear layer."""
        last = next(reversed(self.layers), None)
        return last if last is not None and self.layers[last].kind == "linear" else None

    def layer(self, name: str) -> LayerSpec:
        """The layer called `name`; KeyError with close matches when there is none."""
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(_unknown_layer_message(name, self)) from None

    def group_of(self, name: str) -> CouplingGroup | None:
        gid = self.layers[name].group
        return None if gid is None else self.groups[gid]

    def inventory(self) -> list[dict]:
        """Every module with parameters, one JSON-ready row each, so that the rows' `params` sum
        to `total_params`: each compressible layer, then its folded BatchNorm, then the kept
        modules. A row holds name, kind, weight_shape, params, macs, group, compressible and
        reason (why it is not compressible; "" when it is)."""
        rows = []
        for spec in self.layers.values():
            rows.append(
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "weight_shape": list(spec.weight_shape),
                    "params": spec.params,
                    "macs": spec.macs,
                    "group": spec.group,
                    "compressible": True,
                    "reason": "",
                }
            )
            if spec.batchnorm:
                rows.append(
                    {
                        "name": spec.batchnorm,
                        "kind": "batchnorm",
                        "weight_shape": [spec.out_channels],
                        "params": spec.batchnorm_params,
                        "macs": 0,
                        "group": spec.group,
                        "compressible": False,
                        "reason": f"folded after '{spec.name}': two 32-bit vectors per kept "
                        "channel",
                    }
                )
        for module in self.kept:
            rows.append(
                {
                    "name": module.name,
                    "kind": module.kind,
                    "weight_shape": None,
                    "params": module.params,
                    "macs": None,
                    "group": None,
                    "compressible": False,
                    "reason": module.reason,
                }
            )
        return rows

    def to_dict(self) -> dict:
        """A JSON-ready description of the graph (what `compplan inspect --json` prints):
        model, fingerprint, total_params, baseline_bytes, total_macs, trace_error, `layers` (the
        `inventory` rows) and `groups` (the coupling groups' fields)."""
        return {
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "total_params": self.total_params,
            "baseline_bytes": self.baseline_bits // 8,
            "total_macs": self.total_macs,
            "trace_error": self.trace_error,
            "layers": self.inventory(),
            "groups": [
                {**asdict(group), "layers": list(group.layers), "consumers": list(group.consumers)}
                for group in self.groups
            ],
        }


def _unknown_layer_message(name: str, graph: ModelGraph) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(graph.layers), n=3)
    kept = {module.name: module.reason for module in graph.kept}
    if name in kept:
        return f"layer '{name}' is kept as is ({kept[name]}); remove it from the plan"
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"'{name}' is not a compressible layer of {graph.model_name}{hint} "
        f"(run `compplan inspect` to list them)"
    )
