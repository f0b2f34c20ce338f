"""Latency on the runtime users deploy with: records and predictors that name their runtime,
features that see a layer's neighbours' kernel classes, the exact solver with a predictor that
is not additive, and a search's plans checked on the runtime (`--verify`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from support.latency import known_records

from planner import Planner
from planner.config import SearchConfig
from planner.errors import PlannerError
from planner.presets import make_preset
from planner.verify import verify_candidates
from predictors.latency import (
    LatencyNetwork,
    PredictorError,
    int8_region_plans,
    kernel_mix_plans,
    predictor_from_document,
    profile,
)
from predictors.latency.features import FEATURE_NAMES, RUNTIME_FEATURE_NAMES, plan_layer_configs
from search_spaces import Budget, SearchSpace, discover
from search_spaces.model_spec import load_model
from search_spaces.plan import Plan

DIGITS = "zoo:digits"


@pytest.fixture(scope="module")
def digits():
    loaded = load_model(DIGITS)
    graph = discover(loaded.module, loaded.example_inputs, model_name=DIGITS)
    return loaded, graph


def _network(records) -> LatencyNetwork:
    return LatencyNetwork(steps=1500, members=1).fit(records)


def test_onnxruntime_records_name_their_runtime_and_each_layers_kernel(digits):
    _, graph = digits
    int8 = make_preset(graph, "bits:8+act:8", model=DIGITS)
    records = profile(
        DIGITS,
        plans=[Plan(layers={}), int8],
        structured=False,
        layers=False,
        processes=0,
        progress=False,
        blocks=4,
        rounds=1,
        min_time_ms=50,
        runtime="onnxruntime",
    )
    assert set(records["runtime"]) == {"onnxruntime"}
    uncompressed, quantized = (json.loads(text) for text in records["kernels"])
    assert set(uncompressed.values()) <= {"fp32"}
    planned = {name for name, lp in int8.layers.items() if lp.act_bits == 8}
    assert planned and {quantized[name] for name in planned} == {"int8"}
    full, fast = records["ratio"]
    assert 0.7 < full < 1.4 and fast < 0.8 * full  # int8 kernels: measured, not assumed


def test_a_predictor_is_refused_for_another_runtime(digits):
    _, graph = digits
    plans = [Plan(layers={}), *int8_region_plans(SearchSpace(graph))]
    torch_predictor = _network(known_records(graph, plans))
    assert torch_predictor.runtime == "torch"
    with pytest.raises(PredictorError, match="fit on records timed on torch, not onnxruntime"):
        torch_predictor.require_runtime("onnxruntime")
    torch_predictor.require_runtime("torch")
    document = torch_predictor.to_document()
    with pytest.raises(PlannerError, match="--runtime torch"):
        SearchConfig(model_spec=DIGITS, latency=document, runtime="onnxruntime")
    assert SearchConfig(model_spec=DIGITS, latency=document).priced_runtime == "torch"
    # Records of two runtimes make no one predictor.
    both = [known_records(graph, plans, runtime=r) for r in ("torch", "onnxruntime")]
    with pytest.raises(PredictorError, match=r"onnxruntime and torch; a predictor is for one"):
        _network(pd.concat(both, ignore_index=True))


def test_features_see_the_neighbours_kernel_classes(resnet18_graph):
    graph = resnet18_graph
    space = SearchSpace(graph)
    all_int8, _, _, alternating = int8_region_plans(space)
    configs = plan_layer_configs(graph, [Plan(layers={}), all_int8, alternating])
    names = list(graph.layers)
    j = names.index("layer1.0.conv2")  # written by layer1.0.conv1, read past a residual Add
    assert configs.in_int8[0, j] == 0 and configs.in_int8[1, j] == 2
    assert configs.joins_out[0, j] > 1 and configs.joins_in[0, j] == 1
    assert configs.pooled[0, names.index("layer1.0.conv1")] == 1  # behind the max pooling
    # Alternating: some layer's neighbours differ from it, a boundary of kernel classes.
    own = configs.act_bits[2] == 8
    assert (own & (configs.in_int8[2] == 0)).any()
    contiguous = configs.contiguous()
    assert (contiguous.in_int8[2] == np.where(own, 2, 0)).all()
    assert len(RUNTIME_FEATURE_NAMES) and FEATURE_NAMES[-1] == "weight_bits"


def test_an_onnxruntime_network_prices_boundaries_and_has_an_additive_part(digits):
    _, graph = digits
    space = SearchSpace(graph)
    plans = [Plan(layers={}), *int8_region_plans(space), *kernel_mix_plans(space, 30, seed=0)]
    predictor = _network(known_records(graph, plans, runtime="onnxruntime"))
    assert predictor.runtime == "onnxruntime" and not predictor.additive
    part = predictor.additive_part()
    assert part.additive and not predictor.additive  # a copy; the predictor is unchanged
    # The additive part is the base plus per-layer deltas, exactly (what the knapsack needs).
    int8_names = [n for n, c in space.layers.items() if 8 in c.act_bits][:3]
    singles = [Plan(layers={}), *(Plan(layers={n: plans[1].layers[n]}) for n in int8_names)]
    together = Plan(layers={n: plans[1].layers[n] for n in int8_names})
    base, *alone = part.predict(graph, singles)
    (joint,) = part.predict(graph, [together])
    assert joint == pytest.approx(base + sum(a - base for a in alone), rel=1e-5)
    # ... and the full predictor is not: it prices the boundaries between them.
    full_base, *full_alone = predictor.predict(graph, singles)
    (full_joint,) = predictor.predict(graph, [together])
    assert full_joint != pytest.approx(full_base + sum(a - full_base for a in full_alone), rel=1e-4)
    # Saved and read back, it keeps its features and is still not additive.
    again = predictor_from_document(json.loads(json.dumps(predictor.to_document())))
    assert not again.additive and again.runtime == "onnxruntime"
    assert np.allclose(again.predict(graph, plans[:5]), predictor.predict(graph, plans[:5]))


class _BoundaryLatency:
    """A stand-in runtime: 1 ms a layer, 0.5 ms for an 8-bit one, plus 0.3 ms at every boundary
    between an 8-bit layer and a 32-bit neighbour, which its additive part does not see."""

    additive = False

    def __init__(self, boundaries: bool = True):
        self.boundaries = boundaries

    def additive_part(self):
        return _BoundaryLatency(boundaries=False) if self.boundaries else self

    def reference_ms(self, graph):
        return float(len(graph.layers)), "measured"

    def predict(self, graph, plans):
        configs = plan_layer_configs(graph, plans)
        int8 = configs.act_bits == 8
        ms = np.where(int8, 0.5, 1.0).sum(axis=1)
        if self.boundaries:
            ms = ms + 0.3 * (int8 != (configs.in_int8 == 2)).sum(axis=1)
        return ms.astype(float)


def test_the_exact_solver_solves_again_until_the_full_predictor_meets_the_budget(digits):
    loaded, graph = digits
    latency = _BoundaryLatency()
    budget = Budget(latency_ms=0.8 * len(graph.layers))
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        knobs={"keep": (1.0,), "act_bits": (32, 8)},
        budget=budget,
        latency=latency,
        storage="memory",
        model_spec=DIGITS,
    )
    answer = planner.exact()
    assert answer["resolves"] >= 1  # the first answer missed by its boundaries
    assert answer["feasible"] and answer["latency_ms"] <= budget.latency_ms


def _digits_search(digits, records, *, verify: int, trials: int = 12):
    loaded, graph = digits
    predictor = _network(records)
    reference = predictor.reference_ms(graph)[0]
    return Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        knobs={"keep": (0.5, 1.0), "act_bits": (32, 8)},
        budget=Budget(size_bytes=graph.baseline_bits / 8 / 4, latency_ms=0.9 * reference),
        latency=predictor,
        storage="memory",
        model_spec=DIGITS,
        sampler="random",
        verify=verify,
    ), trials


def _fake_measure(ratio: float):
    """A runtime that runs every plan at `ratio` of the uncompressed model."""

    def measure(model, inputs, plan, **_):
        return SimpleNamespace(ratio=ratio, spread=0.0)

    return measure


def test_verify_says_by_how_much_the_best_plans_missed(digits):
    _, graph = digits
    space = SearchSpace(graph)
    plans = [Plan(layers={}), *int8_region_plans(space), *kernel_mix_plans(space, 20, seed=1)]
    planner, trials = _digits_search(
        digits, known_records(graph, plans, runtime="onnxruntime"), verify=2
    )
    result = planner.search(n_trials=trials)
    missed = r"none of the \d+ plans measured .*--latency-budget x0\.\d+"
    with pytest.raises(PlannerError, match=missed):
        verify_candidates(
            planner.problem, result.trials, 2, runtime="onnxruntime", measure=_fake_measure(2.0)
        )
    kept = verify_candidates(
        planner.problem, result.trials, 2, runtime="onnxruntime", measure=_fake_measure(0.5)
    )
    assert kept.label == kept.candidates[0].label and all(c.within for c in kept.candidates)
    # A runtime 15% slower than predicted: the two best miss, and the next best whose
    # prediction, corrected by that, fits are measured; the best of those within is kept.
    predictor = planner.problem.latency

    def slower(model, inputs, plan, **_):
        ratio = float(predictor.predict_ratio(graph, [plan])[0])
        return SimpleNamespace(ratio=1.15 * ratio, spread=0.0)

    kept = verify_candidates(
        planner.problem, result.trials, 2, runtime="onnxruntime", measure=slower
    )
    first, second = kept.candidates[:2], kept.candidates[2:]
    assert not any(c.within for c in first) and second and second[-1].within
    assert kept.label == second[-1].label


@pytest.mark.slow
def test_verify_keeps_a_plan_measured_within_the_budget_on_onnxruntime(digits):
    """Real records, a real search, each candidate exported and measured on ONNX Runtime."""
    _, graph = digits
    space = SearchSpace(graph)
    plans = [Plan(layers={}), *int8_region_plans(space), *kernel_mix_plans(space, 6, seed=0)]
    records = profile(
        DIGITS, plans=plans, structured=False, layers=False, processes=0, progress=False,
        blocks=4, rounds=1, min_time_ms=50, runtime="onnxruntime",
    )  # fmt: skip
    planner, trials = _digits_search(digits, records, verify=2)
    outcome = planner.run(trials)
    assert outcome.verified and len(outcome.verified) <= 2
    kept = next(c for c in outcome.verified if c.label == outcome.chosen)
    assert kept.within and kept.measured_ms <= planner.config.budget.latency_ms
    assert outcome.plan.provenance["runtime"] == "onnxruntime"
    assert outcome.plan.provenance["verified"][0]["label"] == outcome.verified[0].label


def test_verify_needs_a_latency_budget():
    with pytest.raises(Exception, match="--verify measures the best plans against a latency"):
        SearchConfig(model_spec=DIGITS, budget=Budget(size_bytes=1e5), verify=2)
