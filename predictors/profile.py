"""Measuring latency: the median wall time of a module on a device, and what the device is.

The rules DESIGN.md sets for a latency figure: warm up first, time at least 30 calls, take the
median, fix the thread count, and report the spread, because on shared 2-core machines a median
moves 3–13% between processes, and on a loaded one absolute times swing by a third in phases.
`measure` times one module; `measure_relative` times a module interleaved with its reference (the
uncompressed model) in short blocks and reports their ratio, the figure records and predictors
carry, which the phases move far less. The caller builds the deployed form (`engine.deploy`).
Timing first tells the process's allocator to keep freed memory (`predictors.allocator`): eager
PyTorch frees every activation after use, and glibc's defaults can give large ones back to the
kernel, so each call would page-fault through them again, a cost no deployed runtime pays.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from predictors.allocator import keep_freed_memory

__all__ = [
    "BLOCKS",
    "BLOCK_MS",
    "MIN_TIME_MS",
    "RATIO_STATISTIC",
    "RATIO_STATISTICS",
    "MeasurementError",
    "RelativeTiming",
    "Timing",
    "device_fingerprint",
    "measure",
    "measure_relative",
    "ratio_statistics",
    "time_calls",
]

MIN_RUNS = 30


class MeasurementError(ValueError):
    """A measurement asked for with settings it cannot keep (too few runs, no threads, an
    unknown device); the message names the setting and the range it must be in."""


@dataclass(frozen=True)
class Timing:
    """Latency of one module in milliseconds.

    Attributes:
        median_ms: the median call.
        min_ms, max_ms: the fastest and slowest call.
        iqr_ms: the interquartile range of the calls.
        runs: calls timed (after warm-up).
    """

    median_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    runs: int

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "spread": self.spread}

    @classmethod
    def of(cls, times_ms: list[float]) -> Timing:
        """The timing of a list of call durations (at least 2)."""
        quartiles = statistics.quantiles(times_ms, n=4)
        return cls(
            median_ms=statistics.median(times_ms),
            min_ms=min(times_ms),
            max_ms=max(times_ms),
            iqr_ms=quartiles[2] - quartiles[0],
            runs=len(times_ms),
        )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(device: str = "cpu", threads: int | None = None) -> dict:
    """What a latency figure was measured on: device, CPU model, threads, torch version."""
    fingerprint = {
        "device": device,
        "cpu": _cpu_model(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        fingerprint["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return fingerprint


@torch.no_grad()
def time_calls(
    module: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    *,
    runs: int,
    warmup: int = 10,
    threads: int | None = None,
) -> list[float]:
    """Durations in ms of `runs` calls of `module(*inputs)` after `warmup` untimed ones.

    On CUDA every call is synchronised, so a time is the call's, not its launch's. `threads`
    sets torch's intra-op thread count for the calls and restores it afterwards. The process's
    allocator is first told to keep freed memory (`predictors.allocator`), so that no call
    pays page faults for activations the one before gave back.
    """
    keep_freed_memory()
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    cuda = any(t.is_cuda for t in inputs)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        module.eval()
        for _ in range(warmup):
            module(*inputs)
        sync()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            module(*inputs)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return times


def measure(
    module: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    *,
    runs: int = MIN_RUNS,
    warmup: int = 10,
    threads: int | None = None,
) -> Timing:
    """Time `module(*inputs)`: `warmup` untimed calls, then `runs` timed ones (at least 30).

    Raises:
        MeasurementError: fewer than 30 runs were asked for.
    """
    if runs < MIN_RUNS:
        raise MeasurementError(f"a latency needs at least {MIN_RUNS} timed runs (got {runs})")
    return Timing.of(time_calls(module, inputs, runs=runs, warmup=warmup, threads=threads))


# The figure of a relative measurement (see `RelativeTiming.statistic`). scripts/bench_latency.py
# measures all four side by side; on this shared machine "block_min" agreed best between
# processes (the same plans measured in two processes, 10 blocks: 92%, 92% and 100% of plans
# within ±10% for digits, MobileNetV2 and ResNet-18; the ratio of overall minima 58%, 75%, 83%).
RATIO_STATISTICS = ("block_min", "block_median", "min", "median")
RATIO_STATISTIC = "block_min"

# The least duration of one side's block (`measure_relative`): a side faster than this over
# `calls` takes more calls per block.
BLOCK_MS = 2.0

# The fewest blocks of each side in a relative measurement (`measure_relative`, `profile`,
# `compplan measure-latency`); a plan's measurement also lasts `MIN_TIME_MS`, which sets the
# count for every model that runs under ~40 ms a call. Only a slower one (ResNet-18 in the
# machine's slow phases) takes fewer blocks than the 12 before: scripts/bench_protocol.py
# measures both side by side.
BLOCKS = 8

# The least time the reference is timed for over a plan's measurement (`measure_relative`): a
# model faster than this over its blocks takes more blocks. A ratio's noise falls with the blocks
# it is the median of; 12 blocks of 3 calls (the count before `BLOCKS`) time ResNet-18 (30 ms)
# for 1 s but MobileNetV2 (13 ms) for 0.5 s and digits (0.6 ms) for 0.03 s, and their ratios
# moved more between processes (log-ratio standard deviation 5.2% and 5.5% against ResNet-18's
# 4.1%, bench run 3). The same plan measured six times in one process: MobileNetV2 5.2% at 12
# blocks, 2.75% at this least time; digits 4.4% and 3.0%.
MIN_TIME_MS = 1000.0


@dataclass(frozen=True)
class RelativeTiming:
    """A module timed interleaved with its reference, in blocks: the ratio is the figure.

    On a machine whose speed moves in phases (a shared 2-core machine moves by a third), an
    absolute median inherits the phase it ran in; the module and the reference timed in
    adjacent short blocks share their phases, and their ratio cancels them.

    Attributes:
        module_blocks, reference_blocks: each side's timed calls (ms), block by block, in the
            order they ran.
        statistic: how `ratio` is taken (`RATIO_STATISTICS`): "block_min", the median over
            blocks of each block's ratio of its fastest calls (interference only ever slows a
            call, so a block's fastest call is its least disturbed; the pair within a block
            shares its moment; the median drops the blocks one side of which was hit);
            "block_median", the same with each block's median calls; "min" and "median", the
            ratio of the overall fastest or median calls.
        batch: the batch size timed.
        device: `device_fingerprint` of the machine and thread count.
    """

    module_blocks: list[list[float]]
    reference_blocks: list[list[float]]
    statistic: str
    batch: int
    device: dict

    @property
    def ratios(self) -> dict[str, float]:
        """The ratio by every statistic, for comparing them."""
        return ratio_statistics(self.module_blocks, self.reference_blocks)

    @property
    def ratio(self) -> float:
        """The module's time over the reference's, by `statistic`."""
        return self.ratios[self.statistic]

    @property
    def block_ratios(self) -> list[float]:
        """Each block's ratio of fastest calls, in the order they ran."""
        pairs = zip(self.module_blocks, self.reference_blocks, strict=True)
        return [min(a) / min(r) for a, r in pairs]

    @property
    def spread(self) -> float:
        """The interquartile range of the per-block ratios over their median: how much the
        ratio moved within the measurement."""
        per_block = self.block_ratios
        quartiles = statistics.quantiles(per_block, n=4)
        return (quartiles[2] - quartiles[0]) / statistics.median(per_block)

    @property
    def reference_ms(self) -> float:
        """The reference's time in the quietest moment of the measurement (its fastest call):
        the milliseconds `latency_ms` scales the ratio by."""
        return min(t for block in self.reference_blocks for t in block)

    @property
    def latency_ms(self) -> float:
        """The ratio times the reference's quiet time."""
        return self.ratio * self.reference_ms

    @property
    def uncompressed_ms(self) -> float:
        """The reference's time (for a plan measured against its uncompressed model)."""
        return self.reference_ms

    @property
    def module_ms(self) -> list[float]:
        """Every timed call of the module."""
        return [t for block in self.module_blocks for t in block]

    @property
    def median_ms(self) -> float:
        """The module's median call: the absolute figure, which moves with the machine."""
        return statistics.median(self.module_ms)

    @property
    def blocks(self) -> int:
        return len(self.module_blocks)

    @property
    def calls(self) -> int:
        """Timed calls of the module in its first block (a fast side takes more: `block_ms`)."""
        return len(self.module_blocks[0])

    @classmethod
    def combine(cls, parts: Sequence[RelativeTiming]) -> RelativeTiming:
        """One timing of the blocks of `parts` (rounds of one measurement, taken at different
        moments of a run so that the figure spans its phases)."""
        first = parts[0]
        return cls(
            module_blocks=[b for p in parts for b in p.module_blocks],
            reference_blocks=[b for p in parts for b in p.reference_blocks],
            statistic=first.statistic,
            batch=first.batch,
            device=first.device,
        )

    def to_dict(self) -> dict:
        """JSON-ready: the figures, not the calls."""
        return {
            "ratio": self.ratio,
            "latency_ms": self.latency_ms,
            "reference_ms": self.reference_ms,
            "spread": self.spread,
            "median_ms": self.median_ms,
            "statistic": self.statistic,
            "ratios": self.ratios,
            "blocks": self.blocks,
            "calls": self.calls,
            "batch": self.batch,
            "device": self.device,
        }


def measure_relative(
    module: nn.Module,
    reference: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    *,
    blocks: int = BLOCKS,
    calls: int = 3,
    warmup: int = 2,
    threads: int = 1,
    statistic: str = RATIO_STATISTIC,
    reference_inputs: Tensor | tuple[Tensor, ...] | None = None,
    min_blocks: int = 4,
    block_ms: float | None = None,
    max_calls: int = 64,
    min_time_ms: float = 0.0,
    block_warmup: int = 1,
) -> RelativeTiming:
    """Time `module` against `reference` interleaved in short blocks; the ratio is the figure.

    Both warm up first (`warmup` calls each, alternating), then `blocks` blocks of each run in
    the order A B, B A, A B, ... (so that neither side always runs first after the switch),
    each block `calls` timed calls, after `block_warmup` untimed ones. On CUDA every call is
    synchronised.

    A side faster than `block_ms / calls` takes more calls per block, as many as fill
    `block_ms` (by its fastest warm-up call; at most `max_calls`): a block's fastest call is
    the figure, and the more calls a block holds, the likelier one of them met no interrupt
    (zoo:digits' plans, single small layers). Both sides' blocks then last about as long, so
    they still share their moment.

    A reference whose `blocks` blocks would last less than `min_time_ms` in all (by its fastest
    warm-up call) takes as many more blocks as reach it: the figure is a median over blocks,
    and a fast model's few short blocks leave it noisy (`MIN_TIME_MS`). The reference sets the
    count, not the module, so a plan's measurement lasts about `min_time_ms` × (1 + its ratio).

    Args:
        module: what is measured (a plan's deployed form, one layer).
        reference: what it is measured against (the uncompressed deployed model of the same
            spec, inputs, batch, threads and device; or a fixed calibration module).
        inputs: the module's input batch (and the reference's, unless `reference_inputs`).
        blocks, calls: blocks of each side and the fewest timed calls per block (8 × 3 by
            default: `BLOCKS`).
        warmup: untimed calls of each before the first block (at least 1 for `block_ms`).
        threads: torch's intra-op threads while timing.
        statistic: the figure (`RATIO_STATISTICS`).
        reference_inputs: the reference's own inputs, where they differ.
        min_blocks: the fewest blocks allowed (a round of a longer measurement may take fewer:
            `RelativeTiming.combine`).
        block_ms, max_calls: the least duration of a side's block (default `BLOCK_MS`; 0:
            always `calls`) and the most calls that may take.
        min_time_ms: the least time the reference's timed calls take in all (0: `blocks`
            blocks whatever they last; `MIN_TIME_MS` is what plans are measured with).
        block_warmup: untimed calls of a side at the start of each of its blocks: after the
            switch from the other side, a whole model's first call runs on caches the other
            filled, and without it a block of 3 calls has 2 clean ones to take the fastest of.
            In one of two runs of `scripts/bench_protocol.py` the same plans' ratios spread
            2–3× more without it (in the other, no more), so plans keep it. A single layer
            against the calibration module fills its blocks with many calls and spread no
            more without it in either run: `profile` passes 0 for them.

    Raises:
        MeasurementError: fewer than `min_blocks` blocks, 1 call or 1 thread, a negative
            warmup, `block_ms` or `min_time_ms`, or an unknown statistic.
    """
    block_ms = BLOCK_MS if block_ms is None else block_ms
    if (
        blocks < min_blocks
        or calls < 1
        or threads < 1
        or min(warmup, block_warmup, block_ms, min_time_ms) < 0
    ):
        raise MeasurementError(
            f"blocks must be at least {min_blocks}, calls and threads at least 1, warmup, "
            f"block_warmup, block_ms and min_time_ms at least 0 (got blocks={blocks}, "
            f"calls={calls}, threads={threads}, warmup={warmup}, block_warmup={block_warmup}, "
            f"block_ms={block_ms}, min_time_ms={min_time_ms})"
        )
    if statistic not in RATIO_STATISTICS:
        raise MeasurementError(
            f"unknown ratio statistic {statistic!r}; choose from {', '.join(RATIO_STATISTICS)}"
        )
    reference_inputs = inputs if reference_inputs is None else reference_inputs
    sides = ((module, inputs), (reference, reference_inputs))
    fastest = [math.inf, math.inf]
    for _ in range(warmup):
        for index, (side, side_inputs) in enumerate(sides):
            (took,) = time_calls(side, side_inputs, runs=1, warmup=0, threads=threads)
            fastest[index] = min(fastest[index], took)
    per_block = [_calls_filling(block_ms, t, calls, max_calls) for t in fastest]
    blocks = _blocks_lasting(min_time_ms, per_block[1] * fastest[1], blocks)
    times: tuple[list[list[float]], list[list[float]]] = ([], [])
    for block in range(blocks):
        for index in (0, 1) if block % 2 == 0 else (1, 0):
            side, side_inputs = sides[index]
            times[index].append(
                time_calls(
                    side,
                    side_inputs,
                    runs=per_block[index],
                    warmup=block_warmup,
                    threads=threads,
                )
            )
    first = inputs if isinstance(inputs, Tensor) else inputs[0]
    return RelativeTiming(
        module_blocks=times[0],
        reference_blocks=times[1],
        statistic=statistic,
        batch=int(first.shape[0]),
        device=device_fingerprint(first.device.type, threads),
    )


def _calls_filling(block_ms: float, call_ms: float, calls: int, max_calls: int) -> int:
    """Calls of `call_ms` each that fill `block_ms`, between `calls` and `max_calls`."""
    if not block_ms or not math.isfinite(call_ms) or call_ms <= 0:
        return calls
    return max(calls, min(math.ceil(block_ms / call_ms), max_calls))


def _blocks_lasting(min_time_ms: float, block_ms: float, blocks: int) -> int:
    """Blocks of `block_ms` each that last `min_time_ms` in all, and at least `blocks`."""
    if not min_time_ms or not math.isfinite(block_ms) or block_ms <= 0:
        return blocks
    return max(blocks, math.ceil(min_time_ms / block_ms))


def ratio_statistics(own: list[list[float]], ref: list[list[float]]) -> dict[str, float]:
    """The module-over-reference ratio of blocks of timed calls, by each of
    `RATIO_STATISTICS` (see `RelativeTiming.statistic`)."""
    flat_own = [t for b in own for t in b]
    flat_ref = [t for b in ref for t in b]
    pairs = list(zip(own, ref, strict=True))
    return {
        "block_min": statistics.median(min(a) / min(r) for a, r in pairs),
        "block_median": statistics.median(
            statistics.median(a) / statistics.median(r) for a, r in pairs
        ),
        "min": min(flat_own) / min(flat_ref),
        "median": statistics.median(flat_own) / statistics.median(flat_ref),
    }
