"""Checking a search's best plans on the runtime: each measured, not predicted (`search --verify`).

A latency budget is priced by a predictor during the search; the plan the user ships runs on a
runtime. `verify_candidates` takes the search's best distinct feasible plans by proxy, exports
each one's deployed structure and times it on the runtime against the uncompressed model
(`planner.measure.measure_plan_latency`: a ratio, which the machine's speed phases do not move,
in ms through the predictor's reference time, the scale the budget was given on), and keeps the
best one measured within the budget. When none is, the predictor missed by about the same
factor on plans alike: it measures the next best plans whose prediction, corrected by that
factor, is within the budget; when none of those is either, it says by how much they missed and
which budget to search with instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.results import row_params

__all__ = ["LatencyMiss", "Verified", "VerifiedPlan", "verified_plan", "verify_candidates"]


class LatencyMiss(PlannerError):
    """No candidate measured within the latency budget. `suggested_ratio` is the budget (over
    the uncompressed model) to search with instead: the budget scaled by how far the fastest
    candidate missed it."""

    def __init__(self, message: str, suggested_ratio: float):
        super().__init__(message)
        self.suggested_ratio = suggested_ratio


@dataclass(frozen=True)
class VerifiedPlan:
    """One candidate, measured.

    Attributes:
        label: which trial it is ("trial 42").
        proxy: its proxy value.
        predicted_ms: the predictor's latency.
        measured_ms: the measured ratio times the predictor's reference time (the budget's
            scale).
        measured_ratio: its measured latency over the uncompressed model's, on the runtime.
        spread: the measurement's spread (of the per-block ratios).
        within: measured within the latency budget.
    """

    label: str
    proxy: float
    predicted_ms: float
    measured_ms: float
    measured_ratio: float
    spread: float
    within: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verified:
    """`verify_candidates`' answer: the kept plan's study parameters and label, and every
    candidate measured."""

    params: dict[str, Any]
    label: str
    candidates: list[VerifiedPlan]


def verify_candidates(
    problem,
    trials: pd.DataFrame,
    count: int,
    *,
    runtime: str,
    measure: Callable[..., Any] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Verified:
    """The best plan by proxy measured within the latency budget on `runtime`, among the
    `count` best distinct feasible trials and, where none of those is within it, the next
    `count` best whose prediction is within it once corrected by the factor the first ones
    missed by (module docstring).

    Args:
        problem: the search's `Problem` (its latency predictor and budget set).
        trials: the study's trials (`SearchResult.trials`).
        runtime: what runs the plans ("onnxruntime", "torch").
        measure: `planner.measure.measure_plan_latency` (or another with its signature).
        progress: told each candidate's label as its measurement starts.

    Raises:
        PlannerError: no budget or predictor to verify against, no feasible trial, a plan the
            runtime cannot run (the measurement's own message: ONNX Runtime names the node).
        LatencyMiss: none measured within the budget (by how much, and the budget to search
            with).
    """
    if measure is None:
        from planner.measure import measure_plan_latency as measure
    budget_ms = problem.budget.latency_ms
    if budget_ms is None or problem.latency is None:
        raise PlannerError("--verify measures plans against a latency budget: give one")
    reference_ms = problem.latency.reference_ms(problem.graph)[0]
    threads = int(getattr(problem.latency, "fingerprint", {}).get("threads", 1))

    def measured(label: str, plan, proxy: float, predicted: float) -> VerifiedPlan:
        progress(label)
        try:
            timing = measure(
                problem.model,
                problem.inputs,
                plan,
                graph=problem.graph,
                runtime=runtime,
                threads=threads,
                batch=int(problem.inputs[0].shape[0]),
            )
        except Exception as error:  # the exporter's and the runtime's errors are many kinds
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise PlannerError(
                f"{label} cannot run on {runtime} ({type(error).__name__}: {first}); the "
                "finished trials are kept: search again without --verify, or measure it with "
                "`compplan measure-latency` to see its layers"
            ) from None
        ms = timing.ratio * reference_ms
        return VerifiedPlan(
            label, proxy, predicted, ms, timing.ratio, timing.spread, ms <= budget_ms
        )

    done, params_of = [], {}
    for label, params, plan, proxy, predicted in _best_distinct(problem, trials):
        params_of[label] = params
        done.append(measured(label, plan, proxy, predicted))
        if len(done) == count:
            break
    if not any(m.within for m in done):
        # The predictor missed by about the same factor on plans alike: the next `count` best
        # whose prediction, corrected by it, is within the budget.
        factor = float(np.median([m.measured_ms / m.predicted_ms for m in done]))
        second = 0
        for label, params, plan, proxy, predicted in _best_distinct(problem, trials):
            if label in params_of or predicted * factor > budget_ms:
                continue
            params_of[label] = params
            done.append(measured(label, plan, proxy, predicted))
            second += 1
            if second == count or done[-1].within:
                break
    within = [m for m in done if m.within]
    if not within:
        fastest = min(done, key=lambda m: m.measured_ms)
        over = fastest.measured_ms / budget_ms - 1
        tighter = budget_ms / reference_ms * budget_ms / fastest.measured_ms
        raise LatencyMiss(
            f"none of the {len(done)} plans measured runs within the latency budget on "
            f"{runtime}: ×{fastest.measured_ratio:.3f} at best, {over:.1%} over "
            f"×{budget_ms / reference_ms:.3f}; search again with --latency-budget "
            f"x{tighter:.3f} (the finished trials are kept)",
            tighter,
        )
    kept = min(within, key=lambda m: m.proxy)
    return Verified(params=params_of[kept.label], label=kept.label, candidates=done)


def verified_plan(problem, result, config, progress=lambda _: None):
    """(the plan to hand over, `Verified`): `verify_candidates` over a search's `result`, as
    its `SearchConfig` asks (`verify` candidates, on its `priced_runtime`), the kept trial's
    plan with the candidates' measurements in its provenance."""
    runtime, count = config.priced_runtime, config.verify
    verified = verify_candidates(problem, result.trials, count, runtime=runtime, progress=progress)
    plan = problem.final_plan(
        verified.params,
        storage=result.storage,
        source="compplan search --verify",
        study=problem.study_name,
        verified=[c.to_dict() for c in verified.candidates],
    )
    return plan, verified


def _best_distinct(problem, trials: pd.DataFrame):
    """(label, params, plan, proxy, predicted ms) of the distinct feasible trials, best proxy
    first."""
    feasible = trials["feasible"].fillna(False).astype(bool)
    done = trials[(trials["state"] == "COMPLETE") & feasible & trials["value"].notna()]
    if done.empty:
        raise PlannerError("no feasible trial to verify; run more trials or loosen the budgets")
    seen, names = set(), problem.study_space.distributions
    for _, row in done.sort_values("value").iterrows():
        params = row_params(row, names)
        plan = problem.decode(params)
        key = plan.to_json()
        if key in seen:
            continue
        seen.add(key)
        (evaluation,) = problem.evaluate([plan])
        label = f"trial {int(row['number'])}"
        yield label, params, plan, float(row["value"]), evaluation.latency_ms
