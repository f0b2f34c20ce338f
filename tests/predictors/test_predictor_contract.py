"""The latency predictors' contract (`LatencyPredictor`'s docstring), written once and run over
every kind in `PREDICTOR_KINDS`: a new predictor registered there is tested by this file as is.

The records come from a made-up device (`support.latency`), so nothing here times anything.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from support.latency import known_records

from predictors.latency import (
    PREDICTOR_KINDS,
    LatencyBatch,
    LatencyPredictor,
    PredictorError,
    load_predictor,
    make_predictor,
    random_plans,
)
from predictors.latency.features import plan_layer_configs
from search_spaces import Plan, SearchSpace

# Each kind's quickest settings that still fit: the contract does not depend on accuracy.
OPTIONS = {"network": {"steps": 200}}


@pytest.fixture(scope="module")
def plans(digits_graph):
    return random_plans(SearchSpace(digits_graph), 40, seed=5)


@pytest.fixture(scope="module")
def records(digits_graph, plans):
    return known_records(digits_graph, plans[:30])


@pytest.fixture(scope="module", params=sorted(PREDICTOR_KINDS))
def fitted(request, records) -> LatencyPredictor:
    predictor = make_predictor(request.param, **OPTIONS.get(request.param, {}))
    assert predictor.fit(records) is predictor
    return predictor


@pytest.mark.parametrize("kind", sorted(PREDICTOR_KINDS))
def test_an_unfit_predictor_refuses_to_predict_or_save(kind, digits_graph, plans, tmp_path):
    predictor = make_predictor(kind)
    assert not predictor.fitted
    with pytest.raises(PredictorError, match="not fit"):
        predictor.predict(digits_graph, plans[:2])
    with pytest.raises(PredictorError, match="fit the predictor"):
        predictor.save(tmp_path / "p.json")


def test_fit_records_the_device(fitted):
    assert fitted.fitted and fitted.fingerprint["cpu"] == "test"
    assert fitted.fingerprint["threads"] == 1


def test_predict_over_a_batch(fitted, digits_graph, plans):
    held_out = plans[30:]
    predicted = fitted.predict(digits_graph, held_out)
    assert predicted.shape == (len(held_out),) and predicted.dtype == np.float64
    assert np.isfinite(predicted).all() and (predicted > 0).all()
    as_arrays = fitted.predict(digits_graph, LatencyBatch.from_plans(digits_graph, held_out))
    one_by_one = np.concatenate([fitted.predict(digits_graph, [plan]) for plan in held_out])
    np.testing.assert_allclose(as_arrays, predicted, rtol=1e-12)
    np.testing.assert_allclose(one_by_one, predicted, rtol=1e-6)  # float32 per batch shape


def test_save_then_load_predicts_the_same(fitted, digits_graph, plans, tmp_path):
    path = fitted.save(tmp_path / f"{fitted.kind}.json")
    document = json.loads(path.read_text())  # plain JSON, no pickle
    assert document["kind"] == fitted.kind and document["fingerprint"] == fitted.fingerprint
    again = load_predictor(path)
    assert type(again) is type(fitted) and again.fingerprint == fitted.fingerprint
    np.testing.assert_array_equal(
        again.predict(digits_graph, plans), fitted.predict(digits_graph, plans)
    )


@pytest.mark.parametrize("kind", sorted(PREDICTOR_KINDS))
def test_every_kind_declares_whether_it_is_additive(kind):
    cls = PREDICTOR_KINDS[kind]
    # Declared on the class itself: inheriting the base's False by omission would silently
    # take a predictor out of (or, with a True default, into) the exact solver's latency budget.
    assert "additive" in vars(cls) and isinstance(cls.additive, bool), cls


def _unpruned(plan: Plan) -> Plan:
    return Plan({name: dataclasses.replace(lp, keep=1.0) for name, lp in plan.layers.items()})


def _with_layer(base: Plan, other: Plan, name: str) -> Plan:
    """`base`, but layer `name` as `other` plans it."""
    layers = {n: lp for n, lp in base.layers.items() if n != name}
    if name in other.layers:
        layers[name] = other.layers[name]
    return Plan(layers)


def test_a_predictor_is_its_base_plus_per_layer_deltas_exactly_when_it_says_additive(
    fitted, digits_graph, plans
):
    """What the exact solver relies on: with keep 1, an additive predictor's prediction of a plan
    is the base plan's plus, per layer, the change when that layer alone takes the plan's choice.
    One that declares itself not additive must really not be (the solver then refuses it)."""
    sums = []
    for base, target in [(plans[0], plans[1]), (plans[2], plans[3]), (plans[4], plans[0])]:
        base, target = _unpruned(base), _unpruned(target)
        names = [n for n in digits_graph.layers if base.layers.get(n) != target.layers.get(n)]
        assert names, "the two plans must differ for the check to mean anything"
        singles = [_with_layer(base, target, n) for n in names]
        predicted = fitted.predict(digits_graph, [base, target, *singles])
        deltas = predicted[2:] - predicted[0]
        sums.append(predicted[1] == pytest.approx(predicted[0] + deltas.sum(), rel=1e-6, abs=1e-9))
    assert all(sums) if fitted.additive else not all(sums), (fitted.kind, sums)


def test_a_prediction_is_its_ratio_times_the_reference_measured_with_the_records(
    fitted, digits_graph, plans, records, tmp_path
):
    reference, source = fitted.reference_ms(digits_graph)
    assert source == "measured" and reference == records["reference_ms"].iloc[0]
    ratios = fitted.predict_ratio(digits_graph, plans[30:])
    assert np.allclose(fitted.predict(digits_graph, plans[30:]), ratios * reference)
    assert fitted.predict_ratio(digits_graph, [Plan(layers={})])[0] == pytest.approx(1.0)
    loaded = load_predictor(fitted.save(tmp_path / "p.json"))
    assert loaded.references == fitted.references
    assert (loaded.unit, loaded.unit_ms) == (fitted.unit, fitted.unit_ms) == ("units", 1.0)
    assert np.allclose(loaded.predict_ratio(digits_graph, plans[30:]), ratios)


def test_a_model_the_records_do_not_hold_is_priced_through_its_predicted_reference(
    fitted, digits_graph, plans
):
    other = dataclasses.replace(digits_graph, model_name="zoo:another")
    reference, source = fitted.reference_ms(other)
    assert source == "predicted"
    raw_uncompressed = fitted._predict(other, plan_layer_configs(other, [Plan(layers={})]))[0]
    assert reference == pytest.approx(raw_uncompressed * fitted.unit_ms)
    assert np.allclose(
        fitted.predict(other, plans[30:]), fitted.predict_ratio(other, plans[30:]) * reference
    )
