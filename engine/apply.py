"""`apply_plan_(model, plan)`: do what a plan says, in place.

Order of work, so that kinds compose (pruned + VQ, pruned + b-bit):
1. check the plan against the model (`validate_plan`);
2. prune every coupling group whose keep ratio is below 1 (channels physically removed);
3. replace each planned layer by a `PlannedLayer` whose weight source comes from the unit of the
   layer's weight method (`WeightMethod.build`; a `DenseWeight` for none), with the activation
   quantizer of its activation config calibrated on real inputs (`ActivationMethod.build`);
4. re-estimate BatchNorm statistics on the calibration batch (`engine.calibrate`);
5. give int8 convolutions whose outputs no int8 layer quantizes an output quantizer of their own
   (`engine.int8_outputs`), so that ONNX Runtime runs them as int8 kernels.

A new compression kind plugs in by registering its unit (`search_spaces.methods`), without
touching `apply_plan_`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from torch import Tensor, nn
from tqdm.auto import tqdm

from engine.calibrate import captured_tensors, reestimate_batchnorm_
from engine.int8_outputs import quantize_int8_outputs_
from engine.layers import DenseWeight, PlannedLayer
from engine.permute import PermutationError, permute_group_, pqf_permutation
from engine.pruning import prune_
from search_spaces.attention import split_attention_
from search_spaces.discover import discover
from search_spaces.graph import ModelGraph
from search_spaces.methods import BuildSettings, activation_method_of, weight_method
from search_spaces.methods.lr2vq import POINTS_PER_CENTROID
from search_spaces.plan import Plan, group_keeps, validate_plan

__all__ = ["AppliedPlan", "ApplyConfig", "applied_plan_of", "apply_plan_"]

logger = logging.getLogger("compplan")
# Progress as lines, for a log where no bar is drawn (`planner.cli` turns it on there).
progress_log = logging.getLogger("compplan.progress")
# A layer whose compression takes this long is named in the progress log.
_SLOW_LAYER_SECONDS = 2.0


@dataclass(frozen=True)
class ApplyConfig:
    """How to apply a plan.

    Attributes:
        kmeans_iterations: Lloyd iterations per VQ layer.
        kmeans_points_per_centroid: the VQ codebook is fitted on at most this many of a layer's
            subvectors per centroid, drawn at random (None: on all; every subvector is still
            assigned to the codebook).
        anneal: PQF's annealed k-means (noisy centroid updates early on).
        seed: seeds k-means and the permutation search.
        progress: a progress bar over layers on stderr.
        permute: PQF's channel permutation of prunable coupling groups before VQ (it helps
            where a consumer's subvector spans several input channels, m > K²).
        permutation_swaps: random swaps tried per group by the permutation search.
        reestimate_batchnorm: recompute BatchNorm statistics on the calibration batch once the
            layers are replaced (compression shifts what each BatchNorm sees).
    """

    kmeans_iterations: int = 25
    kmeans_points_per_centroid: int | None = POINTS_PER_CENTROID
    anneal: bool = True
    seed: int = 0
    progress: bool = True
    permute: bool = False
    permutation_swaps: int = 2000
    reestimate_batchnorm: bool = True

    def build_settings(self) -> BuildSettings:
        """What the weight methods' `build` reads: the seed and the effort settings."""
        options = {
            "kmeans_iterations": self.kmeans_iterations,
            "kmeans_points_per_centroid": self.kmeans_points_per_centroid,
            "anneal": self.anneal,
        }
        return BuildSettings(seed=self.seed, options=options)


@dataclass(frozen=True)
class AppliedPlan:
    """What `apply_plan_` did, kept on the model for `export`.

    Attributes:
        plan: the plan.
        graph: the model's graph before compression.
        keeps: keep ratio per coupling group.
        input_shape: shape of the example inputs (needed to rebuild the pruned architecture).
        input_dtype: their dtype ("float32"; "int64" for token ids), to trace it again.
    """

    plan: Plan
    graph: ModelGraph
    keeps: dict[int, float] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    input_dtype: str = "float32"


def applied_plan_of(model: nn.Module) -> AppliedPlan | None:
    """The `AppliedPlan` that `apply_plan_` left on `model`, if any."""
    return getattr(model, "_compplan_applied", None)


def apply_plan_(
    model: nn.Module,
    plan: Plan,
    *,
    calibration: Tensor | None = None,
    example_inputs: Tensor | tuple[Tensor, ...] | None = None,
    config: ApplyConfig | None = None,
    model_name: str = "the model",
) -> AppliedPlan:
    """Compress `model` in place as `plan` says.

    Args:
        model: the uncompressed model.
        plan: a plan for this model.
        calibration: a batch of real (or synthesized) inputs, used to calibrate activation
            quantizers; its first example also serves as example input.
        example_inputs: inputs to trace the model with when no calibration batch is given.
        config: k-means and progress settings.
        model_name: how messages name the model (for example its spec, "zoo:digits").

    Returns:
        What was done (also kept on the model, where `export` finds it).

    Raises:
        PlanError: the plan does not fit the model.
        ValueError: no inputs were given, or the plan quantizes activations and no calibration
            batch was given. Every check runs before the model is changed.
    """
    config = config or ApplyConfig()
    if example_inputs is None and calibration is not None:
        example_inputs = calibration[:1]
    if example_inputs is None:
        raise ValueError(
            "apply_plan_ needs example inputs to trace the model: pass calibration= (a batch) "
            "or example_inputs="
        )
    device = next(model.parameters()).device
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    inputs = tuple(t.to(device) for t in inputs)
    if calibration is not None:
        calibration = calibration.to(device)
    # Attention's projections become modules of their own, where a plan's layers live.
    split_attention_(model)
    graph = discover(model, inputs, model_name=model_name)
    validate_plan(plan, graph)
    keeps = group_keeps(plan, graph)
    quantized_inputs = [n for n, lp in plan.layers.items() if lp.act_bits < 32]
    if quantized_inputs and calibration is None:
        raise ValueError(
            f"{len(quantized_inputs)} layers quantize their inputs (act_bits < 32); pass "
            "calibration= with a batch of real or synthesized inputs"
        )
    check_no_fast_path_quantizers(model, quantized_inputs)

    prune_(model, graph, keeps, inputs)
    if config.permute:
        _permute_for_vq_(model, graph, plan, config)
    layer_inputs = {}
    if quantized_inputs:
        layer_inputs = captured_tensors(model, quantized_inputs, calibration)

    settings = config.build_settings()
    bar = tqdm(plan.layers.items(), desc="applying plan", unit="layer", disable=not config.progress)
    for name, layer_plan in bar:
        bar.set_postfix_str(name)
        if layer_plan.weights is None and layer_plan.activations is None:
            continue  # pruned or learning-rate-only: the layer stays an ordinary module
        module = model.get_submodule(name)
        started = time.perf_counter()
        if layer_plan.weights is None:
            weight: nn.Module = DenseWeight(module.weight)
        else:
            unit = weight_method(layer_plan.method)
            weight = unit.build(module.weight, layer_plan.weights, settings)
        seconds = time.perf_counter() - started
        if seconds >= _SLOW_LAYER_SECONDS:
            label = unit.label(layer_plan.weights) if layer_plan.weights is not None else "dense"
            progress_log.info("applied %s (%s) in %.1f s", name, label, seconds)
        act_quant = None
        if layer_plan.activations is not None:
            act_unit = activation_method_of(layer_plan.activations)
            act_quant = act_unit.build(layer_plan.activations, layer_inputs[name])
        planned = PlannedLayer.replacing(
            module, weight, act_quant, method=layer_plan.method, act_config=layer_plan.activations
        )
        model.set_submodule(name, planned.to(module.weight.device))
        for tied in graph.layers[name].tied:  # the same weight source: one compressed copy
            original = model.get_submodule(tied)
            model.set_submodule(
                tied, PlannedLayer.replacing(original, planned.weight_source, method=planned.method)
            )
    if calibration is not None and config.reestimate_batchnorm:
        reestimate_batchnorm_(model, calibration)
    if calibration is not None:
        quantize_int8_outputs_(model, calibration)
    applied = AppliedPlan(
        plan=plan,
        graph=graph,
        keeps=keeps,
        input_shape=tuple(inputs[0].shape),
        input_dtype=str(inputs[0].dtype).removeprefix("torch."),
    )
    model._compplan_applied = applied
    logger.info("applied %d layer plans (%d groups pruned)", len(plan), len(keeps))
    return applied


def check_no_fast_path_quantizers(model: nn.Module, names: list[str]) -> None:
    """Activation quantizers inside a TransformerEncoderLayer would be skipped at inference:
    PyTorch's fast path reads linear1/linear2's weights and never calls the modules."""
    from search_spaces.plan import PlanError

    for name in names:
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            parent = model.get_submodule(".".join(parts[:depth]))
            if isinstance(parent, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
                raise PlanError(
                    "act_bits < 32 inside a Transformer layer is not supported (PyTorch's "
                    "inference fast path bypasses the quantizer); set act_bits to 32 here",
                    layer=name,
                    field="act_bits",
                )


def _permute_for_vq_(model: nn.Module, graph: ModelGraph, plan: Plan, config: ApplyConfig) -> None:
    for group in graph.groups:
        if not group.prunable:  # its channels reach the output or an op we do not understand
            continue
        # PQF's permutation groups the channels that one VQ subvector spans (m of them).
        consumers = {
            name: (model.get_submodule(name).weight, plan.get(name).weights.m)
            for name in group.consumers
            if plan.get(name).method == "vq"
        }
        if not consumers:
            continue
        channels = model.get_submodule(group.layers[0]).weight.shape[0]
        perm = pqf_permutation(
            consumers, channels, swaps=config.permutation_swaps, seed=config.seed
        )
        try:
            permute_group_(model, graph, group.id, perm)
        except PermutationError as error:
            logger.info("group %d not permuted: %s", group.id, error)
