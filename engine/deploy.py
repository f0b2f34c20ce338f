"""The deployed form of a compressed model: what really runs on a device without low-bit kernels.

`export` stores the compact form (codes, packed levels); running it decodes every VQ weight on every
call. `deployed(model)` returns a copy in which each planned layer is an ordinary Conv1d, Conv2d
or Linear holding its decoded weight (with its activation quantizer in front where it has one, in
its unit's deployed form, whose cost does not depend on the data:
`search_spaces.methods.deployed_layer`), BatchNorms are folded to a scale and a shift per
channel and, where one is the only reader of a convolution's output, merged into that
convolution's weight and bias as inference runtimes do (`engine.merge_batchnorm`; elsewhere, for
example after a Linear, it stays its own elementwise step), and pruned channels are gone. Its
outputs equal the frozen model's up to float rounding; its speed is what a latency model should
learn (no speed-up is assumed from low bit-widths that the device cannot use).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from engine.export import freeze_
from engine.layers import PlannedLayer, plain_layer
from engine.merge_batchnorm import merge_batchnorms_
from search_spaces.graph import ModelGraph
from search_spaces.methods import activation_method_of, deployed_layer
from search_spaces.plan import Plan

__all__ = ["deployed", "deployed_structure"]


def deployed(model: nn.Module) -> nn.Module:
    """A copy of a compressed model in its deployed form (eval mode); `model` is not changed."""
    copy_ = freeze_(copy.deepcopy(model))
    for name, module in list(copy_.named_modules()):
        if isinstance(module, PlannedLayer):
            plain = deployed_layer(plain_layer(module), module.act_config, module.act_quant)
            if module.out_quant is not None:  # an int8 convolution's own output quantizer
                unit = activation_method_of(module.out_config)
                plain = nn.Sequential(plain, unit.deployed(module.out_quant))
            copy_.set_submodule(name, plain)
    merge_batchnorms_(copy_)
    return copy_.eval()


def deployed_structure(
    model: nn.Module,
    plan: Plan,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    graph: ModelGraph | None = None,
) -> nn.Module:
    """The deployed form of `plan` applied to `model`, built without clustering or fine-tuning.

    Latency depends on the structure, not on the weight values: channels pruned as the plan says,
    a (frozen) activation quantizer in front of each layer whose input it quantizes, BatchNorms
    folded and merged as `deployed` merges them, every layer an ordinary dense layer (VQ and
    b-bit weights are decoded to floats on a device without low-bit kernels). This gives the
    same layer shapes and operations as `deployed(model after apply_plan_)` in a fraction of the
    time, for profiling many plans.
    `model` is not changed. Pass `graph` (the model's, from `discover`) to skip discovering it
    again when building many plans of one model.
    """
    from engine.apply import check_no_fast_path_quantizers
    from engine.pruning import prune_
    from search_spaces.attention import split_attention_
    from search_spaces.discover import discover
    from search_spaces.plan import group_keeps, validate_plan

    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    copy_ = copy.deepcopy(model).eval()
    split_attention_(copy_)  # as apply_plan_ does: attention's projections are the plan's layers
    graph = graph if graph is not None else discover(copy_, inputs)
    validate_plan(plan, graph)
    check_no_fast_path_quantizers(copy_, [n for n, lp in plan.layers.items() if lp.act_bits < 32])
    prune_(copy_, graph, group_keeps(plan, graph), inputs)
    for name, layer_plan in plan.layers.items():
        if layer_plan.activations is not None:
            layer = copy_.get_submodule(name)
            copy_.set_submodule(name, deployed_layer(layer, layer_plan.activations))
    freeze_(copy_)
    merge_batchnorms_(copy_)
    return copy_
