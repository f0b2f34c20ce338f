"""Measuring a plan on this machine: its deployed form beside the uncompressed model.

The planner's one measurement, as `compplan measure-latency` runs it. It lives here, not in
`predictors`, because the deployed form is the engine's to build (`engine.deploy`) and
`predictors` does not import `engine`. In Python:

    from planner.measure import measure_plan_latency
    measurement = measure_plan_latency(model, example_inputs, plan)
    print(measurement.ratio, measurement.latency_ms, measurement.reference_ms)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.deploy import deployed_structure
from predictors.profile import (
    BLOCKS,
    MIN_TIME_MS,
    MeasurementError,
    RelativeTiming,
    measure_relative,
)
from predictors.runtimes import RUNTIMES
from search_spaces.plan import Plan

if TYPE_CHECKING:
    from torch import Tensor, nn

    from search_spaces.graph import ModelGraph

__all__ = ["RUNTIMES", "measure_file_latency", "measure_plan_latency"]


def measure_plan_latency(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    plan: Plan,
    *,
    batch: int = 1,
    threads: int = 1,
    blocks: int = BLOCKS,
    calls: int = 3,
    rounds: int = 3,
    min_time_ms: float = MIN_TIME_MS,
    graph: ModelGraph | None = None,
    runtime: str = "onnxruntime",
) -> RelativeTiming:
    """The latency of `plan`'s deployed form of `model` (pruned channels removed, weights
    decoded, activation quantizers in place) as its ratio to the uncompressed deployed model,
    timed interleaved with it in `blocks` blocks of `calls` calls (`measure_relative`), split
    into `rounds` rounds with both built afresh (as `compplan profile` measures), with the
    uncompressed model timed for at least `min_time_ms` in all (more blocks for a fast model), on
    random inputs of the example's shape at `batch`; integer inputs (token ids) are the
    example's own, repeated to `batch`. Its `latency_ms` is the ratio times the uncompressed
    model's quiet time in this measurement.

    `model` is not changed. Pass `graph` (the model's, from `discover`) to skip discovering it.

    With `runtime="onnxruntime"` both deployed forms are exported to ONNX (the torch exporter,
    at the measurement's batch) and each round opens fresh ONNX Runtime sessions on the two
    files, `threads` intra-op threads each: the plan's file against the uncompressed model's
    fp32 file, as it runs where the user deploys. A plan's ONNX file decodes its weights at
    load, so after loading it runs as its deployed structure's file does.

    Raises:
        MeasurementError: batch or threads below 1, fewer than 4 blocks or 1 call, or rounds
            outside 1..blocks, or a negative min_time_ms; an unknown runtime.
        ExportError: onnxruntime is not installed, or the model cannot be exported to ONNX.
        PlanError: the plan does not fit the model.
    """
    if batch < 1:
        raise MeasurementError(f"batch must be at least 1 (got {batch})")
    first = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    if first.dtype.is_floating_point:
        inputs = torch.randn(batch, *first.shape[1:])
    else:  # random ids could fall outside the vocabulary; the example's are valid
        inputs = first[:1].repeat(batch, *[1] * (first.ndim - 1))
    if blocks < 4 or not 1 <= rounds <= blocks or min_time_ms < 0:
        raise MeasurementError(
            "blocks must be at least 4, rounds in 1..blocks and min_time_ms at least 0 (got "
            f"{blocks}, {rounds} and {min_time_ms})"
        )
    if runtime not in RUNTIMES:
        raise MeasurementError(f"runtime '{runtime}': choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        return _measure_on_onnxruntime(
            model, example_inputs, plan, inputs, graph=graph, threads=threads, blocks=blocks,
            calls=calls, rounds=rounds, min_time_ms=min_time_ms,
        )  # fmt: skip

    def fresh_pair():
        return (
            deployed_structure(model, plan, example_inputs, graph=graph),
            deployed_structure(model, Plan(layers={}), example_inputs, graph=graph),
        )

    return _measured_in_rounds(fresh_pair, inputs, threads, blocks, calls, rounds, min_time_ms)


def _measured_in_rounds(
    fresh_pair, inputs, threads: int, blocks: int, calls: int, rounds: int, min_time_ms: float
) -> RelativeTiming:
    """`blocks` blocks split over `rounds` rounds, each timing a pair (plan, uncompressed) that
    `fresh_pair()` builds afresh, combined into one timing."""
    parts = []
    for r in range(rounds):
        compressed, original = fresh_pair()
        share = blocks // rounds + (r < blocks % rounds)
        parts.append(
            measure_relative(
                compressed,
                original,
                inputs,
                blocks=share,
                calls=calls,
                threads=threads,
                min_blocks=1,
                min_time_ms=min_time_ms / rounds,
            )
        )
    return RelativeTiming.combine(parts)


def _measure_on_onnxruntime(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    plan: Plan,
    inputs: Tensor,
    *,
    graph: ModelGraph | None,
    threads: int,
    blocks: int,
    calls: int,
    rounds: int,
    min_time_ms: float,
) -> RelativeTiming:
    """`measure_plan_latency` on ONNX Runtime: both deployed forms exported once, fresh
    sessions each round."""
    import tempfile

    from engine.onnx_export import export_structure
    from engine.onnx_session import onnx_session

    with tempfile.TemporaryDirectory(prefix="compplan-measure-") as scratch:
        files = {}
        for side, side_plan in (("plan", plan), ("uncompressed", Plan(layers={}))):
            structure = deployed_structure(model, side_plan, example_inputs, graph=graph)
            files[side] = Path(scratch) / f"{side}.onnx"
            export_structure(structure, inputs, files[side])

        def fresh_pair():
            return tuple(  # opened again each round: no kernels to count
                onnx_session(files[side], threads=threads, count_kernels=False).module()
                for side in ("plan", "uncompressed")
            )

        return _measured_in_rounds(fresh_pair, inputs, threads, blocks, calls, rounds, min_time_ms)


def measure_file_latency(
    path: str | Path,
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    threads: int = 1,
    blocks: int = BLOCKS,
    calls: int = 3,
    rounds: int = 3,
    min_time_ms: float = MIN_TIME_MS,
) -> RelativeTiming:
    """An exported ONNX file (`compplan export`, `apply --onnx`) on ONNX Runtime against the
    uncompressed `model`'s fp32 ONNX file, timed as `measure_plan_latency` times a plan: the
    file the user ships, measured, as a ratio (and its ms through the uncompressed model's
    quiet time). Inputs are the example's, at its batch.

    Raises:
        ExportError: onnxruntime cannot open the file, or `model` cannot be exported.
    """
    import tempfile

    from engine.onnx_export import export_structure
    from engine.onnx_session import onnx_session

    inputs = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    with tempfile.TemporaryDirectory(prefix="compplan-measure-") as scratch:
        reference = Path(scratch) / "uncompressed.onnx"
        structure = deployed_structure(model, Plan(layers={}), example_inputs)
        export_structure(structure, inputs, reference)

        def fresh_pair():
            return tuple(
                onnx_session(file, threads=threads, count_kernels=False).module()
                for file in (path, reference)
            )

        return _measured_in_rounds(fresh_pair, inputs, threads, blocks, calls, rounds, min_time_ms)
