"""Latency measurement: the timing primitive, interleaved measurement against a reference, the
deployed structure it times, and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.deploy import deployed, deployed_structure
from planner.cli import main
from predictors.profile import (
    MIN_RUNS,
    MeasurementError,
    Timing,
    device_fingerprint,
    measure,
    measure_interleaved,
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


def test_measure_interleaved_keeps_the_middle_repeats():
    small = nn.Linear(64, 8)
    large = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))
    m = measure_interleaved(small, large, torch.randn(4, 64), runs=MIN_RUNS, threads=1)
    assert len(m.repeats["compressed"]) == len(m.repeats["uncompressed"]) == 3
    assert m.latency_ms == sorted(m.repeats["compressed"])[1]
    assert m.uncompressed_ms == sorted(m.repeats["uncompressed"])[1]
    assert m.ratio == m.latency_ms / m.uncompressed_ms and m.batch == 4
    assert m.to_dict()["ratio"] == m.ratio and m.device["threads"] == 1
    with pytest.raises(MeasurementError, match="repeats odd"):
        measure_interleaved(small, large, torch.randn(4, 64), repeats=2)


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
    assert main([*argv, "--plan", str(plan), "--runs", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"latency_ms", "spread", "uncompressed_ms", "ratio", "device"} <= set(result)
    # no timing comparison here: speed is shown by benchmarks, not by tests on a noisy machine
    assert (
        result["latency_ms"] > 0
        and result["uncompressed_ms"] > 0
        and len(result["repeats"]["compressed"]) == 3
    )
    assert main([*argv, "--plan", str(plan), "--runs", "3"]) == 2
