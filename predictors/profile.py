"""Measuring latency: the median wall time of a module on a device, and what the device is.

The rules DESIGN.md sets for a latency figure: warm up first, time at least 30 calls, take the
median, fix the thread count, and report the spread, because on shared 2-core machines a median
moves 3–13% between processes. `measure` times one module; the caller builds the deployed form
(`engine.deploy`) and, where noise demands, repeats in separate processes.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["Timing", "device_fingerprint", "measure", "time_calls"]

MIN_RUNS = 30


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
        ValueError: fewer than 30 runs were asked for.
    """
    if runs < MIN_RUNS:
        raise ValueError(f"a latency needs at least {MIN_RUNS} timed runs (got {runs})")
    return Timing.of(time_calls(module, inputs, runs=runs, warmup=warmup, threads=threads))
