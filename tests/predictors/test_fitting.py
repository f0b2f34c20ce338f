"""Fitting a latency predictor with a held-out score: the split by plan, and what it reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.latency import known_records

from predictors.latency import (
    PredictorError,
    fit_predictor,
    holdout_split,
    random_plans,
)
from predictors.latency.features import BASE_COLUMNS, plan_layer_configs
from search_spaces import Plan, SearchSpace

DIGITS = "zoo:digits"
KEY = list(BASE_COLUMNS)


@pytest.fixture(scope="module")
def records(digits_graph):
    plans = random_plans(SearchSpace(digits_graph), 20, seed=11)
    profiled = known_records(digits_graph, plans)
    # Layers timed for no plan, as `profile --synthetic-layers` adds them.
    synthetic = known_records(digits_graph, random_plans(SearchSpace(digits_graph), 3, seed=12))
    synthetic = synthetic[synthetic["record"] == "layer"].assign(model="synthetic", input_shape="")
    return pd.concat([profiled, synthetic], ignore_index=True)


def _configurations(graph, models: pd.DataFrame) -> set[tuple]:
    configs = plan_layer_configs(graph, [Plan.from_json(text) for text in models["plan"]])
    columns = configs.columns()
    return set(zip(*(columns[k].reshape(-1).tolist() for k in KEY), strict=True))


def _keys(layers: pd.DataFrame) -> list[tuple]:
    return [tuple(int(v) for v in row) for row in layers[KEY].itertuples(index=False)]


def test_holdout_keeps_held_out_plans_layers_out_of_training(digits_graph, records):
    train, test = holdout_split(records, 0.25, seed=0)
    assert sorted([*train.index, *test.index]) == list(records.index)  # a partition
    train_models = train[train["record"] == "model"]
    test_models = test[test["record"] == "model"]
    assert len(test_models) == 5 and len(train_models) == 15
    seen = _configurations(digits_graph, train_models)
    only_held = _configurations(digits_graph, test_models) - seen
    train_layers = train[(train["record"] == "layer") & (train["model"] == DIGITS)]
    test_layers = test[test["record"] == "layer"]
    # The defect this catches: every layer record used to go into training, so the held-out
    # plans' own layers, timed alone, told the lookup table their answer.
    assert set(_keys(train_layers)) <= seen
    assert len(test_layers) > 0 and set(_keys(test_layers)) == only_held
    assert (train["model"] == "synthetic").sum() == (records["model"] == "synthetic").sum()


def test_holdout_split_is_seeded(records):
    first, again = holdout_split(records, 0.25, seed=3), holdout_split(records, 0.25, seed=3)
    assert list(first[1].index) == list(again[1].index)
    assert list(holdout_split(records, 0.25, seed=4)[1].index) != list(first[1].index)
    with pytest.raises(PredictorError, match=r"\(0, 1\)"):
        holdout_split(records, 1.0)


def test_the_lookup_tables_held_out_figure_is_earned(digits_graph, records):
    report = fit_predictor(records, "lookup", holdout=0.25, seed=0)
    assert report.holdout.plans == 5 and report.plans == 20
    # Told the held-out layers, the table sums them exactly (error below 1e-9, see
    # test_latency.py); without them it prices some by their nearest entry's MACs.
    assert report.holdout.mape > 1e-6
    assert report.holdout.within_10pct > 0.5  # but a made-up linear device is easy
    document = report.to_dict()
    assert set(document) == {"kind", "records", "plans", "holdout", "fit_seconds", "device"}
    models = records[records["record"] == "model"]
    predicted, measured = report.predictor.predict_records(models)  # fit on everything
    assert np.abs(predicted / measured - 1).max() < 1e-9


def test_fit_without_holdout_and_refusals(records):
    report = fit_predictor(records, "flops", holdout=0)
    assert report.holdout is None and "holdout" not in report.to_dict()
    with pytest.raises(PredictorError, match=r"\[0, 1\)"):
        fit_predictor(records, "flops", holdout=1.5)
    with pytest.raises(PredictorError, match="unknown predictor kind"):
        fit_predictor(records, "forest", holdout=0)
