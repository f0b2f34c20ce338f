"""Latency measurement: the timing primitive, the deployed structure it times, and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.deploy import deployed, deployed_structure
from planner.cli import main
from predictors.profile import MIN_RUNS, device_fingerprint, measure
from search_spaces import LayerPlan, Plan, discover
from zoo.digits import INPUT_SHAPE, DigitsNet


def test_measure_reports_a_median_within_its_range():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    timing = measure(model, torch.randn(4, 64), runs=MIN_RUNS, threads=1)
    assert timing.runs == MIN_RUNS
    assert 0 < timing.min_ms <= timing.median_ms <= timing.max_ms
    assert timing.spread >= 0
    with pytest.raises(ValueError, match="at least 30"):
        measure(model, torch.randn(4, 64), runs=5)
    fingerprint = device_fingerprint("cpu", 1)
    assert fingerprint["threads"] == 1 and fingerprint["torch"] == torch.__version__


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
    layers["blocks.1.conv2"] = LayerPlan(k=64, m=9, keep=layers["blocks.1.conv2"].keep, act_bits=4)
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
