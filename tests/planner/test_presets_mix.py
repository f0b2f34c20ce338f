"""`uniform_mix_at_size`: one setting (or two neighbouring ones) on every layer, at a size."""

from __future__ import annotations

import pytest

from planner.presets import uniform_mix_at_size
from predictors.size import size_report
from search_spaces import discover
from search_spaces.methods import BitsConfig, VQConfig
from search_spaces.model_spec import load_model
from search_spaces.plan import LayerPlan, Plan, PlanError


@pytest.fixture(scope="module")
def mnist1d_graph():
    loaded = load_model("zoo:mnist1d", pretrained=False)  # the structure only: no training
    return discover(loaded.module, loaded.example_inputs, model_name="zoo:mnist1d")


def _size(plan: Plan, graph) -> float:
    return size_report(plan, graph).total_bits / 8


def _check_uniform(plan: Plan, graph, *, protect_ends: bool) -> None:
    """Every compressed layer has the same kind of setting, with at most two neighbouring
    values (k and 2k, or two adjacent bit-widths); the ends stay dense when protected."""
    ends = {graph.first_conv, graph.classifier}
    compressed = [n for n in graph.layers if not (protect_ends and n in ends)]
    if protect_ends:
        assert all(plan.get(n).weights is None for n in ends)
    kinds = {type(plan.get(n).weights) for n in compressed}
    assert len(kinds) == 1
    if kinds == {VQConfig}:
        values = sorted({plan.get(n).weights.k for n in compressed})
        assert len(values) == 1 or (len(values) == 2 and values[1] == 2 * values[0])
    elif kinds == {BitsConfig}:
        values = sorted({plan.get(n).weights.bits for n in compressed})
        widths = (1, 2, 3, 4, 8, 16)
        assert len(values) == 1 or widths.index(values[1]) == widths.index(values[0]) + 1
    assert len({plan.get(n).keep for n in compressed if plan.get(n).keep < 1}) <= 1
    assert all(plan.get(n).act_bits == 32 and plan.get(n).lr_mult == 1 for n in plan.layers)


@pytest.mark.parametrize("protect_ends", [True, False])
@pytest.mark.parametrize("ratio", [4, 10, 16, 32, 45, 64, 100])
def test_lands_within_one_percent_on_mnist1d(mnist1d_graph, ratio, protect_ends):
    target = mnist1d_graph.baseline_bits / 8 / ratio
    plan = uniform_mix_at_size(mnist1d_graph, target, protect_ends=protect_ends)
    assert abs(_size(plan, mnist1d_graph) / target - 1) <= 0.01
    _check_uniform(plan, mnist1d_graph, protect_ends=protect_ends)
    assert plan.model == "zoo:mnist1d" and plan.fingerprint == mnist1d_graph.fingerprint
    assert plan.provenance["preset"].startswith("uniform ")


@pytest.mark.parametrize("protect_ends", [True, False])
@pytest.mark.parametrize("ratio", [6, 16, 30, 64])
def test_lands_within_one_percent_on_resnet18(resnet18_graph, ratio, protect_ends):
    target = resnet18_graph.baseline_bits / 8 / ratio
    plan = uniform_mix_at_size(resnet18_graph, target, protect_ends=protect_ends, model="r18")
    assert abs(_size(plan, resnet18_graph) / target - 1) <= 0.01
    _check_uniform(plan, resnet18_graph, protect_ends=protect_ends)
    assert plan.model == "r18"


def test_tolerance_is_honoured(mnist1d_graph):
    target = mnist1d_graph.baseline_bits / 8 / 20
    plan = uniform_mix_at_size(mnist1d_graph, target, tolerance=0.002)
    assert abs(_size(plan, mnist1d_graph) / target - 1) <= 0.002


def test_one_setting_where_one_lands(mnist1d_graph):
    """At the exact size of PQ k=16 with PQF's small blocks everywhere, no mix is needed."""
    ends = {mnist1d_graph.first_conv, mnist1d_graph.classifier}
    exact = Plan(
        {
            name: LayerPlan(weights=VQConfig(k=16, m=3 if spec.kernel_elems == 3 else 4))
            for name, spec in mnist1d_graph.layers.items()
            if name not in ends
        }
    )
    plan = uniform_mix_at_size(mnist1d_graph, _size(exact, mnist1d_graph))
    assert plan.layers == exact.layers
    assert plan.provenance["preset"] == "uniform PQ k=16, keep 1"


def test_prunes_only_where_it_must(mnist1d_graph):
    """Sizes that unpruned settings reach get no pruning; smaller ones the least that reaches."""
    baseline = mnist1d_graph.baseline_bits / 8
    unpruned = uniform_mix_at_size(mnist1d_graph, baseline / 16)
    assert all(lp.keep == 1.0 for lp in unpruned.layers.values())
    pruned = uniform_mix_at_size(mnist1d_graph, baseline / 64)
    keeps = {lp.keep for lp in pruned.layers.values()} - {1.0}
    assert len(keeps) == 1 and keeps.pop() < 1.0


@pytest.mark.parametrize("ratio", [1000, 0.5])
def test_unreachable_size_is_a_clear_error(mnist1d_graph, ratio):
    target = mnist1d_graph.baseline_bits / 8 / ratio  # below every uniform plan, or above dense
    with pytest.raises(PlanError, match=r"no uniform plan of zoo:mnist1d lands within 1\.0% of"):
        uniform_mix_at_size(mnist1d_graph, target)


def test_bad_arguments(mnist1d_graph):
    with pytest.raises(PlanError, match="positive size"):
        uniform_mix_at_size(mnist1d_graph, 0)
