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


def test_the_study_name_says_its_objective():
    # A real search's report and plan name its study: "proxy" there would mislead (issue 41).
    budget = Budget(size_bytes=96247)
    proxy = SearchConfig(model_spec="zoo:digits", budget=budget)
    assert "proxy" in proxy.study_name()
    for backend in ("optuna", "ray"):
        real = SearchConfig(
            model_spec="zoo:digits", budget=budget, objective="real", backend=backend
        )
        assert real.study_name() != proxy.study_name() and "real" in real.study_name()
        assert "proxy" not in real.study_name()


def test_fresh_appends_the_identity_to_the_default_name_only():
    config = SearchConfig(model_spec="zoo:digits", budget=Budget(size_bytes=96247), fresh=True)
    assert config.study_name(identity="0123abcd") == "zoo-digits-proxy-size96247-0123abcd"
    with pytest.raises(PlannerError, match="--fresh starts a new study under the default name"):
        config.with_(study="mine")


def test_a_tune_experiments_marker_matches_the_config_that_wrote_it(tmp_path):
    """The Ray backend resumes only the search that made an experiment: the marker it writes
    must compare equal to the same config read again (tuples come back as lists)."""
    config = SearchConfig(model_spec="zoo:digits", backend="ray", knobs={"keep": (0.5, 1.0)})
    (tmp_path / CONFIG_FILE).write_text(json.dumps(_same_search(config)))
    again = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert again == _same_search(config)
    assert again != _same_search(config.with_(objective="real"))
