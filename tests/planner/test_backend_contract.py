"""The `SearchBackend` contract, written once and run over every backend (as Optuna's sampler
contract tests are): Optuna in this process, and Ray Tune on a local Ray it starts itself."""

from __future__ import annotations

import pytest

from planner import Planner, PlannerError, RaySettings
from planner.results import row_params
from predictors.size import SizePredictor
from search_spaces import Budget, discover
from search_spaces.model_spec import load_model

TRIALS = 8
BACKENDS = ("optuna", "ray")


@pytest.fixture(scope="module")
def digits():
    loaded = load_model("zoo:digits")
    return loaded, discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")


def _planner(digits, backend: str, folder, **settings) -> Planner:
    loaded, graph = digits
    return Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        model_spec="zoo:digits",
        budget=Budget(size_bytes=graph.baseline_bits / 8 / 30),
        backend=backend,
        storage=f"sqlite:///{folder / 'studies.db'}",
        ray=RaySettings(results=str(folder / "ray")),
        **settings,
    )


@pytest.fixture(scope="module", params=BACKENDS)
def searched(request, digits, tmp_path_factory):
    """(backend name, planner, result of a search of TRIALS trials on an empty study)."""
    folder = tmp_path_factory.mktemp(request.param)
    planner = _planner(digits, request.param, folder)
    return request.param, planner, planner.search(n_trials=TRIALS)


def test_a_run_on_an_empty_study_leaves_the_trials_asked_for(searched):
    _, _, result = searched
    assert len(result.trials) == TRIALS
    assert (result.trials["state"] == "COMPLETE").all()


def test_the_exact_seed_is_scored_and_nothing_beats_it_by_more_than_the_proxy_allows(searched):
    _, planner, result = searched
    exact = planner.exact()
    names = planner.study_space.distributions
    scored = [row_params(row, names) for _, row in result.trials.iterrows()]
    assert any(all(p.get(k) == v for k, v in exact["params"].items()) for p in scored)
    assert result.best["value"] <= exact["proxy"] + 1e-12


def test_every_trial_keeps_the_size_budget_with_repair(searched):
    _, planner, result = searched
    assert (result.trials["size_bytes"] <= planner.budget.size_bytes * (1 + 1e-9)).all()
    assert result.trials["feasible"].all()


def test_best_is_the_best_feasible_trial_and_best_plan_is_its_plan(searched, digits):
    _, planner, result = searched
    _, graph = digits
    trials = result.trials
    assert result.best["value"] == pytest.approx(trials["value"].min())
    assert SizePredictor(graph).predict([result.best_plan])[0] == pytest.approx(
        result.best["size_bytes"]
    )
    assert planner.proxy.value(result.best_plan) == pytest.approx(result.best["value"])
    assert result.pareto["feasible"].all() and not result.pareto.empty
    assert result.best_plan.provenance["trial"] == result.best["number"]


def test_the_result_can_be_rebuilt_over_the_trials_kept(searched):
    _, planner, result = searched
    again = planner.result()
    assert len(again.trials) == len(result.trials)
    assert again.best["value"] == pytest.approx(result.best["value"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_a_backend_cannot_do_is_refused_not_ignored(digits, tmp_path, backend):
    if backend == "ray":
        with pytest.raises(PlannerError, match="--pareto is for --backend optuna"):
            _planner(digits, backend, tmp_path, pareto=True)
        planner = _planner(digits, backend, tmp_path)
        with pytest.raises(PlannerError, match="runs a given number of trials"):
            planner.search(new_trials=3)
    else:
        # Optuna runs a worker's share (new_trials) and Pareto searches: both are honoured.
        planner = _planner(digits, backend, tmp_path, pareto=True, study="pareto")
        assert len(planner.search(new_trials=3).trials) == 3
