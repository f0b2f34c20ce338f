"""`SearchConfig`: validated, and equal to its JSON round trip whatever it holds."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from planner import PlannerError, RealSettings, SearchConfig
from planner.backends.ray_backend import CONFIG_FILE, _same_search
from search_spaces import Budget


def _round_trip(config: SearchConfig) -> SearchConfig:
    return SearchConfig.from_dict(json.loads(json.dumps(config.to_dict())))


def test_a_config_equals_its_json_round_trip():
    config = SearchConfig(
        model_spec="zoo:digits",
        input_shape="1,1,8,8",
        budget=Budget(size_bytes=40_000, macs=10**6),
        knobs=MappingProxyType({"keep": (0.5, 1.0), "act_bits": [32, 8]}),
        overrides={"re:stem.*": {"methods": ("bits",)}},
        objective="real",
        real=RealSettings(epochs=1, candidates=3, balanced=(4, 2)),
        pareto=True,
        seed=7,
    )
    assert config.input_shape == (1, 1, 8, 8)
    assert _round_trip(config) == config


def test_a_null_budget_reads_as_no_budget_and_a_bad_one_is_one_line():
    data = SearchConfig().to_dict()
    assert SearchConfig.from_dict({**data, "budget": None}).budget == Budget()
    with pytest.raises(PlannerError, match=r"search config:.*budget.size_bytes"):
        SearchConfig.from_dict({**data, "budget": {"size_bytes": -1}})
    with pytest.raises(PlannerError, match="unknown fields nope"):
        SearchConfig.from_dict({**data, "nope": 1})


def test_the_study_name_says_what_its_trials_score():
    budget = Budget(size_bytes=96247)
    proxy = SearchConfig(model_spec="zoo:digits", budget=budget)
    # With Optuna a real search refines the same proxy trials: one study for both.
    assert SearchConfig(model_spec="zoo:digits", budget=budget, objective="real").study_name() == (
        proxy.study_name()
    )
    ray_real = SearchConfig(model_spec="zoo:digits", budget=budget, objective="real", backend="ray")
    assert ray_real.study_name() != proxy.study_name() and "real" in ray_real.study_name()


def test_a_tune_experiments_marker_matches_the_config_that_wrote_it(tmp_path):
    """The Ray backend resumes only the search that made an experiment: the marker it writes
    must compare equal to the same config read again (tuples come back as lists)."""
    config = SearchConfig(model_spec="zoo:digits", backend="ray", knobs={"keep": (0.5, 1.0)})
    (tmp_path / CONFIG_FILE).write_text(json.dumps(_same_search(config)))
    again = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert again == _same_search(config)
    assert again != _same_search(config.with_(objective="real"))
