"""Measuring a plan's deployed form beside the uncompressed model (`planner.measure`)."""

from __future__ import annotations

import pytest
import torch

from planner.measure import measure_plan_latency
from planner.presets import make_preset
from predictors.profile import BLOCKS, MeasurementError
from search_spaces import discover
from search_spaces.model_spec import load_model


def test_measure_plan_latency_times_the_plan_at_its_batch_and_leaves_the_model():
    loaded = load_model("zoo:digits", pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    plan = make_preset(graph, "keep:0.5")
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    m = measure_plan_latency(loaded.module, loaded.example_inputs, plan, batch=2, graph=graph)
    assert m.batch == 2 and m.latency_ms > 0 and m.reference_ms > 0
    # At least 3 timed calls per block; a side faster than 2 ms per 3 calls takes more; and
    # digits (well under 1 ms a call) takes more than BLOCKS blocks to be timed for MIN_TIME_MS.
    assert m.blocks > BLOCKS and len(m.module_ms) >= 3 * m.blocks and m.device["threads"] == 1
    assert len(m.module_ms) == sum(len(block) for block in m.module_blocks)
    after = loaded.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # pruning worked on a copy
    with pytest.raises(MeasurementError, match="batch"):
        measure_plan_latency(loaded.module, loaded.example_inputs, plan, batch=0)
