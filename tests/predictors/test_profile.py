"""Latency measurement: the timing primitive, interleaved measurement against a reference, the
deployed structure it times, and the CLI."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.deploy import deployed, deployed_structure
from planner.cli import main
from predictors.profile import (
    MIN_RUNS,
    MeasurementError,
    RelativeTiming,
    Timing,
    device_fingerprint,
    measure,
    measure_relative,
)
from search_spaces import LayerPlan, N2UQConfig, Plan, VQConfig, discover
from zoo.digits import INPUT_SHAPE, DigitsNet


def test_measure_reports_a_median_within_its_range():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    timing = measure(model, torch.randn(4, 64), runs=MIN_RUNS, threads=1)
    assert timing.runs == MIN_RUNS
    assert 0 < timing.min_ms <= timing.median_ms <= timing.max_ms
    assert timing.iqr_ms <= timing.max_ms - timing.min_ms
    assert timing.spread == pytest.approx(timing.iqr_ms / timing.median_ms)
    with pytest.raises(MeasurementError, match="at least 30"):
        measure(model, torch.randn(4, 64), runs=5)
    fingerprint = device_fingerprint("cpu", 1)
    assert fingerprint["threads"] == 1 and fingerprint["torch"] == torch.__version__


def test_timing_of_known_calls():
    timing = Timing.of([float(ms) for ms in range(1, 10)])  # 1 … 9 ms
    assert (timing.median_ms, timing.min_ms, timing.max_ms, timing.runs) == (5, 1, 9, 9)
    assert timing.iqr_ms == 5.0 and timing.spread == 1.0  # quartiles 2.5 and 7.5


class _Counting(nn.Module):
    """A module that records the order its calls and its partner's come in."""

    def __init__(self, inner: nn.Module, name: str, log: list[str]):
        super().__init__()
        self.inner, self.name, self.log = inner, name, log

    def forward(self, x):
        self.log.append(self.name)
        return self.inner(x)


def test_measure_relative_interleaves_blocks_and_reports_the_ratio():
    log: list[str] = []
    small = _Counting(nn.Linear(64, 8), "A", log)
    large = _Counting(nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 8)), "B", log)
    m = measure_relative(small, large, torch.randn(4, 64), blocks=4, calls=2, warmup=1, block_ms=0)
    # Warm-up (one each), then blocks A B, B A, A B, B A of one untimed and 2 timed calls.
    assert "".join(log) == "AB" + "AAABBB" + "BBBAAA" + "AAABBB" + "BBBAAA"
    assert len(m.module_ms) == 8 and len(m.block_ratios) == 4 and m.statistic == "block_min"
    assert m.ratio == m.ratios["block_min"] == pytest.approx(np.median(m.block_ratios))
    assert m.block_ratios[0] == min(m.module_blocks[0]) / min(m.reference_blocks[0])
    assert m.ratios["min"] == pytest.approx(min(m.module_ms) / m.reference_ms)
    assert m.latency_ms == pytest.approx(m.ratio * m.reference_ms)
    assert set(m.ratios) == {"min", "median", "block_median", "block_min"}
    both = RelativeTiming.combine([m, m])
    assert both.blocks == 8 and both.ratio == pytest.approx(m.ratio)
    assert m.ratio < 1 and m.batch == 4 and m.device["threads"] == 1
    assert m.to_dict()["ratio"] == m.ratio and "module_ms" not in m.to_dict()
    with pytest.raises(MeasurementError, match="at least 4"):
        measure_relative(small, large, torch.randn(4, 64), blocks=3)
    with pytest.raises(MeasurementError, match="block_warmup"):
        measure_relative(small, large, torch.randn(4, 64), block_warmup=-1)


def test_measure_relative_can_open_blocks_without_an_untimed_call():
    log: list[str] = []
    small = _Counting(nn.Linear(64, 8), "A", log)
    large = _Counting(nn.Linear(64, 64), "B", log)
    kw = {"blocks": 4, "calls": 2, "warmup": 1, "block_ms": 0, "block_warmup": 0}
    m = measure_relative(small, large, torch.randn(4, 64), **kw)
    # As single layers are timed: each block its timed calls alone.
    assert "".join(log) == "AB" + "AABB" + "BBAA" + "AABB" + "BBAA"
    assert {len(b) for b in m.module_blocks + m.reference_blocks} == {2}
    with pytest.raises(MeasurementError, match="statistic"):
        measure_relative(small, large, torch.randn(4, 64), statistic="mean")


class _Sleeping(nn.Module):
    """A module whose call lasts about `ms` milliseconds."""

    def __init__(self, ms: float):
        super().__init__()
        self.ms = ms

    def forward(self, x):
        time.sleep(self.ms / 1e3)
        return x


def test_a_fast_side_takes_enough_calls_to_fill_its_blocks():
    fast, slow = nn.Identity(), _Sleeping(6.0)
    m = measure_relative(fast, slow, torch.randn(1, 4), blocks=4, calls=2, block_ms=3.0)
    # The slow side's two calls already fill 3 ms; the fast side's fill them up to the cap.
    assert {len(b) for b in m.reference_blocks} == {2}
    assert {len(b) for b in m.module_blocks} == {64}
    capped = measure_relative(
        fast, slow, torch.randn(1, 4), blocks=4, calls=2, block_ms=3.0, max_calls=10
    )
    assert {len(b) for b in capped.module_blocks} == {10}
    fixed = measure_relative(fast, slow, torch.randn(1, 4), blocks=4, calls=2, block_ms=0)
    assert {len(b) for b in fixed.module_blocks} == {2}


def test_a_fast_reference_takes_enough_blocks_to_be_timed_min_time_ms():
    reference, slow = _Sleeping(2.0), _Sleeping(8.0)
    kw = {"blocks": 4, "calls": 2, "warmup": 3, "block_ms": 0}  # the fastest of 3 sets the count
    # A block of the reference lasts 2 calls of at least 2 ms (a sleep is never shorter than
    # asked): 60 ms takes at most 15 of them, and more than the 4 asked for.
    timed = measure_relative(slow, reference, torch.randn(1, 4), min_time_ms=60.0, **kw)
    assert 4 < timed.blocks <= 15
    reference_ms = sum(t for block in timed.reference_blocks for t in block)
    assert reference_ms > 0.9 * 60.0
    # The reference sets the count, not the module: a slow reference needs no more blocks.
    assert measure_relative(reference, slow, torch.randn(1, 4), min_time_ms=60.0, **kw).blocks == 4
    assert measure_relative(slow, reference, torch.randn(1, 4), **kw).blocks == 4
    with pytest.raises(MeasurementError, match="min_time_ms"):
        measure_relative(slow, reference, torch.randn(1, 4), min_time_ms=-1.0, **kw)


def test_the_cli_times_plans_for_min_time_ms_by_default():
    from planner.cli_parser import build_parser
    from predictors.profile import MIN_TIME_MS

    parser = build_parser()
    for argv in (["measure-latency", "--plan", "p"], ["profile", "--out", "r.parquet"]):
        args = parser.parse_args([*argv, "--model", "zoo:digits"])
        assert args.min_time_ms == MIN_TIME_MS


def _shapes(model: nn.Module) -> list[tuple]:
    return [
        (type(m).__name__, tuple(m.weight.shape))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]


def test_deployed_structure_matches_the_deployed_compressed_model():
    torch.manual_seed(0)
    model = DigitsNet().eval()
    graph = discover(model, torch.zeros(INPUT_SHAPE))
    layers = {n: LayerPlan(keep=0.5) for g in graph.groups if g.prunable for n in g.layers}
    layers["blocks.1.conv2"] = LayerPlan(
        weights=VQConfig(k=64, m=9),
        activations=N2UQConfig(bits=4),
        keep=layers["blocks.1.conv2"].keep,
    )
    plan = Plan(layers)
    structure = deployed_structure(model, plan, torch.zeros(INPUT_SHAPE))
    compressed = copy.deepcopy(model)
    apply_plan_(
        compressed, plan, calibration=torch.rand(32, 1, 8, 8), config=ApplyConfig(progress=False)
    )
    assert _shapes(structure) == _shapes(deployed(compressed))
    assert isinstance(structure.get_submodule("blocks.1.conv2"), nn.Sequential)
    assert _shapes(model)[1][1] == (64, 64, 3, 3)  # the original is untouched


def test_measure_latency_cli(capsys, tmp_path):
    plan = tmp_path / "keep.json"
    assert (
        main(["preset", "--model", "zoo:resnet18", "--preset", "keep:0.5", "--out", str(plan)]) == 0
    )
    capsys.readouterr()
    argv = ["measure-latency", "--model", "zoo:resnet18", "--input-shape", "1,3,64,64"]
    assert main([*argv, "--plan", str(plan), "--blocks", "4", "--min-time-ms", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"latency_ms", "spread", "reference_ms", "ratio", "ratios", "device"} <= set(result)
    # no timing comparison here: speed is shown by benchmarks, not by tests on a noisy machine
    assert result["latency_ms"] == pytest.approx(result["ratio"] * result["reference_ms"])
    assert result["blocks"] == 4 and result["calls"] == 3 and result["ratio"] > 0
    # A least time the 4 blocks of a 64×64 ResNet-18 (a few ms a call) fall short of adds blocks.
    # One round, so the whole 600 ms is one round's: 4 blocks of 3 calls reach it only at 50 ms
    # a call (150 ms split over 3 rounds was reached at 17 ms a call on a loaded machine).
    least = ["--blocks", "4", "--rounds", "1", "--min-time-ms", "600"]
    assert main([*argv, "--plan", str(plan), *least, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"] > 4
    assert main([*argv, "--plan", str(plan), "--blocks", "3"]) == 2
    # A preset by name, as predict-latency takes it, without writing its file first.
    assert main([*argv, "--preset", "keep:0.5", "--blocks", "4", "--min-time-ms", "0"]) == 0
    assert "keep:0.5 on zoo:resnet18" in capsys.readouterr().out
