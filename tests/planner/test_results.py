"""The one result builder both backends use: best trial, Pareto front, best plan."""

from __future__ import annotations

import pandas as pd

from planner.results import pareto_front


def _trials(latency):
    return pd.DataFrame(
        {
            "number": [0, 1, 2, 3],
            "state": ["COMPLETE"] * 4,
            "value": [0.1, 0.2, 0.3, 0.4],
            "size_bytes": [100.0, 200.0, 300.0, 400.0],
            "latency_ms": latency,
            "feasible": [True, True, True, True],
        }
    )


def test_a_latency_column_without_predictions_does_not_make_every_trial_pareto_optimal():
    # Trial 0 beats the others in proxy and size; without a latency predictor (a Ray search
    # reports latency_ms None) it alone is the front.
    assert list(pareto_front(_trials([None] * 4))["number"]) == [0]
    # With predictions the latency counts: trial 3 is the fastest, so it is on the front too.
    assert list(pareto_front(_trials([4.0, 3.0, 2.0, 1.0]))["number"]) == [0, 1, 2, 3]
    assert list(pareto_front(_trials([1.0, 3.0, 2.0, 4.0]))["number"]) == [0]


def test_infeasible_and_failed_trials_are_never_on_the_front():
    trials = _trials([None] * 4)
    trials.loc[0, "feasible"] = False
    trials.loc[1, "state"] = "FAIL"
    assert list(pareto_front(trials)["number"]) == [2]
