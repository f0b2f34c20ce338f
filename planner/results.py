"""`SearchResult`, and the one builder every backend makes it with.

A backend hands over its trials as a table with the same columns whatever ran them ("number",
"state", "value" (the proxy), "size_bytes", "latency_ms", "macs", "feasible", "repaired", the
parameters as "params_<name>", and for the real objective "accuracy"); `build_result` picks the
best feasible trial, the Pareto front and the best plan from it, the same way for Optuna and Ray.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from planner.problem import Problem
from search_spaces.plan import Plan

__all__ = ["SearchResult", "build_result", "pareto_front", "trial_params"]


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        trials: one row per trial: number, state, value (the proxy), size_bytes, latency_ms,
            macs, feasible, the parameters ("params_<name>"), and what the backend adds (worker,
            accuracy, node, ...).
        pareto: the feasible trials no other feasible trial beats in proxy and size (and
            latency where predicted), best proxy first.
        best_plan: the best feasible plan (None if no trial is feasible).
        best: its trial number, value, size_bytes, latency_ms and macs (and
            validation_accuracy for the real objective).
        study_name, storage: where the trials are kept.
        exact: the exact solver's figures and "seeded" (whether it seeded the study), or
            {"note": why it has none} (not asked for, Pareto, no plan at keep 1 fits).
        timings: per trial run here, seconds for the whole trial, its objective and the
            sampler's proposal (Optuna backend; None elsewhere).
    """

    trials: pd.DataFrame
    pareto: pd.DataFrame
    best_plan: Plan | None
    best: dict[str, Any]
    study_name: str
    storage: str
    exact: dict[str, Any] | None = None
    timings: pd.DataFrame | None = None


def trial_params(trial) -> dict[str, Any]:
    """The parameters of the plan an Optuna trial scored: its sampled ones with repair's changes."""
    return {**trial.params, **trial.user_attrs.get("repaired", {})}


def _plain(value):
    """numpy scalars (as pandas hands them back) as Python ones."""
    return value.item() if isinstance(value, np.generic) else value


def _repaired(value) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value:
        return json.loads(value)
    return {}


def row_params(row: pd.Series, names) -> dict[str, Any]:
    """The parameters of the plan a trial row scored (its "params_" columns, repair merged)."""
    params = {name: _plain(row[f"params_{name}"]) for name in names}
    return {**params, **_repaired(row.get("repaired"))}


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """Feasible complete trials not beaten in every column of (value, size[, latency]).

    The latency column counts only where it holds predictions: a column of None (no latency
    predictor) would otherwise make every trial incomparable, and all of them the front."""
    if trials.empty or "feasible" not in trials:
        return trials.iloc[0:0]
    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"].fillna(False).astype(bool)]
    columns = ["value", "size_bytes"]
    if "latency_ms" in done and done["latency_ms"].notna().all() and not done.empty:
        columns.append("latency_ms")
    points = done[columns].to_numpy(float)
    keep = [
        i
        for i, p in enumerate(points)
        if not (np.all(points <= p, axis=1) & np.any(points < p, axis=1)).any()
    ]
    return done.iloc[keep].sort_values("value")


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def build_result(
    problem: Problem,
    trials: pd.DataFrame,
    *,
    storage: str,
    source: str,
    maximize: str | None = None,
    exact: Mapping[str, Any] | None = None,
    timings: pd.DataFrame | None = None,
) -> SearchResult:
    """The result over `trials` (the table described in the module docstring).

    Args:
        problem: the search's problem (decodes the best trial's plan).
        trials: every trial so far.
        storage: where they are kept (for the result and the plan's provenance).
        source: what ran them, for the plan's provenance ("compplan search", ...).
        maximize: a column to maximize instead of minimizing the proxy ("accuracy" for the
            real objective).
        exact: the exact solver's answer (or {"note": why there is none}).
        timings: per-trial seconds (see `SearchResult`).
    """
    best: dict[str, Any] = {}
    best_plan = None
    done = trials
    if not trials.empty:
        feasible = trials["feasible"].fillna(False).astype(bool)
        done = trials[(trials["state"] == "COMPLETE") & feasible & trials["value"].notna()]
    if not done.empty:
        key = maximize or "value"
        row = done.loc[done[key].idxmax() if maximize else done[key].idxmin()]
        best = {
            "number": int(row["number"]),
            "value": float(row["value"]),
            "size_bytes": float(row["size_bytes"]),
            "latency_ms": _number(row.get("latency_ms")),
            "macs": None if pd.isna(row.get("macs")) else int(row["macs"]),
        }
        provenance = {
            "source": source,
            "objective": "real" if maximize else "proxy",
            "study": problem.study_name,
            "trial": best["number"],
            "proxy": best["value"],
            "size_bytes": best["size_bytes"],
            "latency_ms": best["latency_ms"],
        }
        if maximize:
            best["validation_accuracy"] = float(row[maximize])
            provenance["validation_accuracy"] = best["validation_accuracy"]
        params = row_params(row, problem.study_space.distributions)
        best_plan = problem.final_plan(params, storage=storage, **provenance)
    return SearchResult(
        trials=trials,
        pareto=pareto_front(trials),
        best_plan=best_plan,
        best=best,
        study_name=problem.study_name,
        storage=storage,
        exact=None if exact is None else {k: v for k, v in exact.items() if k != "plan"},
        timings=timings,
    )
