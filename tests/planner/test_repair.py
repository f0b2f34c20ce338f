"""Budget repair and the exact solver over activation bits and an additive latency budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from planner import Planner
from planner.repair import repair_positions
from planner.results import trial_params
from predictors.latency.features import LatencyBatch, plan_layer_configs
from predictors.size import SizePredictor
from search_spaces import Budget, Knobs, SearchSpace, discover
from search_spaces.model_spec import load_model


def _frontiers(rng, layers=4, positions=5):
    """Random frontiers: sizes falling and errors rising along each row, padded with inf."""
    lengths = rng.integers(1, positions + 1, layers)
    sizes = np.full((layers, positions), np.inf)
    errors = np.full((layers, positions), np.inf)
    for j, n in enumerate(lengths):
        sizes[j, :n] = np.sort(rng.integers(1, 40, n))[::-1]
        errors[j, :n] = np.sort(rng.random(n))
    return errors, sizes, lengths


@pytest.mark.parametrize("fill", [True, False])
def test_repair_meets_any_reachable_budget_and_leaves_no_upgrade_that_fits(fill):
    rng = np.random.default_rng(0)
    for _ in range(200):
        errors, sizes, lengths = _frontiers(rng)
        rows = np.arange(len(lengths))
        start = np.array([rng.integers(n) for n in lengths])
        smallest = sizes[rows, lengths - 1].sum()
        limit = float(rng.uniform(smallest * 0.9, sizes[:, 0].sum()))
        positions = repair_positions(errors, sizes, start, limit, fill=fill)
        assert ((positions >= 0) & (positions < lengths)).all()
        total = sizes[rows, positions].sum()
        if smallest <= limit:
            assert total <= limit
        else:  # unreachable: every layer ends at (a tie of) its smallest option
            assert total == smallest
            continue
        if sizes[rows, start].sum() <= limit:
            # A plan already within budget only ever improves.
            assert errors[rows, positions].sum() <= errors[rows, start].sum() + 1e-12
            if not fill:
                assert (positions == start).all()
        if fill:
            for j, c in enumerate(positions):
                for p in range(c):
                    better = errors[j, p] < errors[j, c]
                    assert not (better and total - sizes[j, c] + sizes[j, p] <= limit)


def test_repair_lands_near_the_knapsack_optimum():
    """From random starts, repaired plans are within a few percent of the brute-force optimum
    on small instances (the sampler's job is the rest)."""
    rng = np.random.default_rng(1)
    ratios = []
    for _ in range(50):
        errors, sizes, lengths = _frontiers(rng, layers=5)
        rows = np.arange(len(lengths))
        limit = float(sizes[rows, lengths - 1].sum() + rng.uniform(0.2, 0.6) * sizes[:, 0].sum())
        best = min(
            errors[rows, list(pick)].sum()
            for pick in itertools.product(*[range(n) for n in lengths])
            if sizes[rows, list(pick)].sum() <= limit
        )
        repaired = min(
            errors[rows, repair_positions(errors, sizes, start, limit)].sum()
            for start in (np.array([rng.integers(n) for n in lengths]) for _ in range(20))
        )
        assert repaired >= best - 1e-12
        ratios.append(repaired / best)
    assert np.median(ratios) < 1.05


KNOBS = {"keep": (1.0,), "act_bits": (32, 8, 4)}


@pytest.fixture(scope="module")
def digits_keep1():
    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    space = SearchSpace(graph, Knobs(**KNOBS))
    return loaded, graph, space


def _planner(digits_keep1, budget, **options):
    loaded, _, _ = digits_keep1
    return Planner(
        loaded.module,
        loaded.example_inputs,
        knobs=KNOBS,
        budget=budget,
        storage="memory",
        model_spec="zoo:digits",
        **options,
    )


def test_repaired_trials_keep_the_budget_and_their_plan_is_what_was_scored(digits_keep1):
    _, graph, _ = digits_keep1
    budget = Budget(size_bytes=graph.baseline_bits / 8 / 40)
    planner = _planner(digits_keep1, budget, sampler="random", seed_exact=False)
    result = planner.search(n_trials=30)
    assert result.trials["feasible"].all()
    assert result.trials["repaired"].notna().sum() > 0
    study = planner.open_study()
    sizes = SizePredictor(graph)
    for t in study.trials:
        plan = planner.study_space.decode(trial_params(t))
        assert sizes.predict([plan])[0] == pytest.approx(t.user_attrs["size_bytes"])
        assert planner.proxy.value(plan) == pytest.approx(t.values[0])
    # Without repair, random proposals mostly miss a 40× budget.
    plain = _planner(digits_keep1, budget, sampler="random", seed_exact=False, repair=False)
    assert not plain.search(n_trials=30).trials["feasible"].all()


class _StandInLatency:
    """A stand-in device: each layer costs its input's bits / 8 ms plus its deployed
    configuration's `column` / `per_ms` ms."""

    def __init__(self, column: str, per_ms: float):
        self.column, self.per_ms = column, per_ms

    def predict(self, graph, plans):
        batch = plans if isinstance(plans, LatencyBatch) else LatencyBatch.from_plans(graph, plans)
        layers = getattr(plan_layer_configs(graph, batch), self.column) / self.per_ms
        return (layers + batch.act_bits / 8).sum(axis=1).astype(float)


def test_exact_solver_meets_a_latency_budget_and_beats_every_sampled_plan(digits_keep1):
    _, graph, _ = digits_keep1
    latency = _StandInLatency("weight_bits", 32)  # 1 ms a layer: weights decode to floats
    size = graph.baseline_bits / 8 / 20
    free = _planner(digits_keep1, Budget(size_bytes=size), latency=latency).exact()
    # Halfway to the fastest plan: some layers must take lower activation bits.
    fastest = _planner(digits_keep1, Budget(size_bytes=size), latency=latency).problem.reachable
    budget = Budget(size_bytes=size, latency_ms=(free["latency_ms"] + fastest.latency_ms) / 2)
    planner = _planner(digits_keep1, budget, latency=latency, seed_exact=False)
    exact = planner.exact()
    assert exact["feasible"]
    assert exact["latency_ms"] <= budget.latency_ms
    assert exact["proxy"] > free["proxy"]  # the latency budget binds
    result = planner.search(n_trials=60)
    feasible = result.trials[result.trials["feasible"]]
    assert not feasible.empty
    assert feasible["value"].min() >= exact["proxy"] - 1e-9


def test_a_latency_budget_only_pruning_reaches_is_refused_by_the_exact_solver_in_ms(digits_keep1):
    """The solver's limits are deltas from a base plan; its refusal speaks in the budget's ms."""
    from planner.budgets import BudgetError

    loaded, _, _ = digits_keep1
    latency = _StandInLatency("macs", 1e5)  # pruning pays
    at_keep_1 = Planner(
        loaded.module,
        loaded.example_inputs,
        knobs={"keep": (1.0,)},
        storage="memory",
        latency=latency,
    ).problem.reachable.latency_ms
    pruned = Planner(loaded.module, loaded.example_inputs, storage="memory", latency=latency)
    assert pruned.problem.reachable.latency_ms < at_keep_1
    limit = (pruned.problem.reachable.latency_ms + at_keep_1) / 2
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        budget=Budget(latency_ms=limit),
        storage="memory",
        latency=latency,
    )
    with pytest.raises(BudgetError) as refusal:
        planner.exact()
    message = str(refusal.value)
    assert f"the latency budget {limit:g} ms is below the least any plan with every keep" in message
    reached = float(message.split("reaches (")[1].split(" ms")[0])
    assert reached == pytest.approx(at_keep_1, rel=1e-3)


@pytest.mark.slow
def test_a_budget_only_pruning_reaches_keeps_every_repaired_trial_feasible(digits_keep1):
    """Below the smallest plan at keep 1, repair lowers the keep ratios too; the exact solver
    (keep 1 only) says why it did not seed the study."""
    from planner.budgets import reachable_minimum

    loaded, graph, _ = digits_keep1
    at_keep_1 = reachable_minimum(SearchSpace(graph, Knobs(keep=(1.0,)))).size_bytes
    pruned = reachable_minimum(SearchSpace(graph)).size_bytes
    assert pruned < at_keep_1
    budget = Budget(size_bytes=(pruned + at_keep_1) / 2)
    planner = Planner(
        loaded.module, loaded.example_inputs, budget=budget, storage="memory", sampler="random"
    )
    result = planner.search(n_trials=20)
    assert result.trials["feasible"].all()
    assert any("keep" in str(r) for r in result.trials["repaired"].dropna())
    assert "params" not in result.exact and "keep ratio at 1" in result.exact["note"]
    # In bytes, and without the "exact solver:" the report already prints before it.
    assert result.exact["note"].startswith(f"the size budget {budget.size_bytes:,.0f} bytes")


def _fastest_at_keep_1(loaded, latency) -> float:
    """The least predicted latency of any plan without pruning."""
    knobs = {"keep": (1.0,)}
    planner = Planner(loaded.module, loaded.example_inputs, knobs=knobs, latency=latency)
    return planner.problem.reachable.latency_ms


@pytest.mark.parametrize("edge", [0.5, 0.001])
def test_latency_repair_meets_a_budget_only_pruning_reaches(digits_keep1, edge):
    """Under the uncompressed model's latency only pruning helps, which the exact solver (keep
    1) cannot seed: repair lowers the keeps, and where even the lowest miss with the proposal's
    activation bits, takes the fastest ones too. `edge` places the budget between the fastest
    plan (0) and the fastest at keep 1 (1); at 0.001 most proposals need both."""
    loaded, _, _ = digits_keep1
    latency = _StandInLatency("macs", 1e5)  # pruning pays; so do fewer activation bits

    def planner(budget=None, **options):
        return Planner(
            loaded.module,
            loaded.example_inputs,
            budget=budget or Budget(),
            storage="memory",
            latency=latency,
            sampler="random",
            **options,
        )

    at_keep_1 = _fastest_at_keep_1(loaded, latency)
    fastest = planner().problem.reachable.latency_ms
    limit = fastest + edge * (at_keep_1 - fastest)
    result = planner(Budget(latency_ms=limit)).search(n_trials=20)
    assert result.trials["feasible"].all()
    assert (result.trials["latency_ms"] <= limit).all()
    assert any("keep" in str(r) for r in result.trials["repaired"].dropna())
    if edge < 0.01:
        assert any("act_bits" in str(r) for r in result.trials["repaired"].dropna())
    assert "params" not in result.exact and "only pruning goes lower" in result.exact["note"]
    # The same proposals unrepaired miss it, near the fastest plan nearly all.
    plain = planner(Budget(latency_ms=limit), repair=False).search(n_trials=20)
    assert plain.trials["feasible"].mean() < (0.9 if edge > 0.01 else 0.2)


def test_latency_repair_leaves_a_fitting_proposal_alone_and_keeps_size_repair(digits_keep1):
    """Size repair runs first; latency repair only lowers keeps, so the size budget holds."""
    loaded, graph, _ = digits_keep1
    latency = _StandInLatency("macs", 1e5)
    at_keep_1 = _fastest_at_keep_1(loaded, latency)
    budget = Budget(size_bytes=graph.baseline_bits / 8 / 30, latency_ms=0.8 * at_keep_1)
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        budget=budget,
        storage="memory",
        latency=latency,
        sampler="random",
    )
    result = planner.search(n_trials=20)
    assert result.trials["feasible"].all()
    assert (result.trials["size_bytes"] <= budget.size_bytes).all()
    from planner.latency_repair import LatencyRepair

    repair = LatencyRepair(planner.problem)
    lowest = {key: choices[-1] for key, (_, choices) in repair.keep_keys.items()}
    (fits,) = planner.problem.evaluate([planner.problem.decode(lowest)])
    assert fits.latency_ms <= budget.latency_ms
    assert repair(lowest) == {}
    assert repair({}) != {}  # keep 1 everywhere is over the budget
