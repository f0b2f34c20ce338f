"""Measuring latency: the median wall time of a module on a device, and what the device is.

The rules DESIGN.md sets for a latency figure: warm up first, time at least 30 calls, take the
median, fix the thread count, and report the spread, because on shared 2-core machines a median
moves 3–13% between processes. `measure` times one module; `measure_interleaved` times a module
beside its reference (the uncompressed model) in interleaved repeats and reports the ratio, the
figure DESIGN.md has records carry. The caller builds the deployed form (`engine.deploy`) and,
where noise demands, repeats in separate processes.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LatencyMeasurement",
    "MeasurementError",
    "Timing",
    "device_fingerprint",
    "measure",
    "measure_interleaved",
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
    sets torch's intra-op thread count for the calls and restores it afterwards.
    """
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


@dataclass(frozen=True)
class LatencyMeasurement:
    """A module's latency measured beside its reference, the uncompressed model.

    Attributes:
        latency_ms: the module's median call in the middle repeat (by median).
        spread: that repeat's interquartile range relative to its median.
        uncompressed_ms: the reference's median call in its middle repeat.
        repeats: each repeat's median, {"compressed": [...], "uncompressed": [...]}, in the
            order they ran (interleaved: compressed, uncompressed, compressed, ...).
        batch: the batch size timed.
        device: `device_fingerprint` of the machine and thread count.
    """

    latency_ms: float
    spread: float
    uncompressed_ms: float
    repeats: dict[str, list[float]]
    batch: int
    device: dict

    @property
    def ratio(self) -> float:
        """The module's latency over the reference's: what carries across the machine's speed
        phases, which move both alike."""
        return self.latency_ms / self.uncompressed_ms

    def to_dict(self) -> dict:
        """JSON-ready: the fields and `ratio`."""
        return {**asdict(self), "ratio": self.ratio}


def measure_interleaved(
    module: nn.Module,
    reference: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    *,
    runs: int = MIN_RUNS,
    threads: int = 1,
    repeats: int = 3,
) -> LatencyMeasurement:
    """Time `module` and `reference` in `repeats` interleaved repeats and keep the middle ones.

    Interleaved, so that a change in the machine's load touches both alike; the middle repeat
    (by median) of each, so that one repeat caught in a slow phase does not set the figure.

    Args:
        module: the deployed compressed model.
        reference: the uncompressed model, in its deployed form too (BatchNorm folded).
        inputs: one batch, given to both.
        runs: timed calls per repeat (at least 30).
        threads: torch's intra-op threads while timing.
        repeats: repeats of each (at least 1; odd, so that one is in the middle).

    Raises:
        MeasurementError: fewer than 30 runs, fewer than 1 thread, or an even or zero
            number of repeats.
    """
    if runs < MIN_RUNS or threads < 1 or repeats < 1 or repeats % 2 == 0:
        raise MeasurementError(
            f"runs must be at least {MIN_RUNS}, threads at least 1 and repeats odd "
            f"(got runs={runs}, threads={threads}, repeats={repeats})"
        )
    timings: dict[str, list[Timing]] = {"compressed": [], "uncompressed": []}
    for _ in range(repeats):
        timings["compressed"].append(measure(module, inputs, runs=runs, threads=threads))
        timings["uncompressed"].append(measure(reference, inputs, runs=runs, threads=threads))
    middle = {k: sorted(v, key=lambda t: t.median_ms)[repeats // 2] for k, v in timings.items()}
    first = inputs if isinstance(inputs, Tensor) else inputs[0]
    return LatencyMeasurement(
        latency_ms=middle["compressed"].median_ms,
        spread=middle["compressed"].spread,
        uncompressed_ms=middle["uncompressed"].median_ms,
        repeats={k: [t.median_ms for t in v] for k, v in timings.items()},
        batch=int(first.shape[0]),
        device=device_fingerprint(first.device.type, threads),
    )
