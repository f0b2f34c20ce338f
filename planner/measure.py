"""Measuring a plan on this machine: its deployed form beside the uncompressed model.

The planner's one measurement, as `compplan measure-latency` runs it. It lives here, not in
`predictors`, because the deployed form is the engine's to build (`engine.deploy`) and
`predictors` does not import `engine`. In Python:

    from planner.measure import measure_plan_latency
    measurement = measure_plan_latency(model, example_inputs, plan, runs=50)
    print(measurement.latency_ms, measurement.ratio)
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from engine.deploy import deployed_structure
from engine.export import freeze_
from predictors.profile import LatencyMeasurement, MeasurementError, measure_interleaved

if TYPE_CHECKING:
    from torch import Tensor, nn

    from search_spaces.graph import ModelGraph
    from search_spaces.plan import Plan

__all__ = ["measure_plan_latency"]


def measure_plan_latency(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    plan: Plan,
    *,
    batch: int = 1,
    threads: int = 1,
    runs: int = 50,
    graph: ModelGraph | None = None,
) -> LatencyMeasurement:
    """The latency of `plan`'s deployed form of `model` (pruned channels removed, weights
    decoded, activation quantizers in place), timed interleaved with the uncompressed model in
    three repeats on random inputs of the example's shape at `batch` (`measure_interleaved`);
    integer inputs (token ids) are the example's own, repeated to `batch`.

    `model` is not changed. Pass `graph` (the model's, from `discover`) to skip discovering it.

    Raises:
        MeasurementError: batch or threads below 1, or fewer than 30 runs.
        PlanError: the plan does not fit the model.
    """
    if batch < 1:
        raise MeasurementError(f"batch must be at least 1 (got {batch})")
    first = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    if first.dtype.is_floating_point:
        inputs = torch.randn(batch, *first.shape[1:])
    else:  # random ids could fall outside the vocabulary; the example's are valid
        inputs = first[:1].repeat(batch, *[1] * (first.ndim - 1))
    compressed = deployed_structure(model, plan, example_inputs, graph=graph)
    original = freeze_(copy.deepcopy(model))
    return measure_interleaved(compressed, original, inputs, runs=runs, threads=threads)
