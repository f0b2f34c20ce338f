"""The `SearchBackend` contract, and what every backend shares: the sampler, the seeding and the
scoring of one proposal."""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from planner.budgets import BudgetError
from planner.config import SearchConfig
from planner.latency_repair import LatencyRepair, Repair, chain
from planner.problem import Evaluation, Problem
from planner.repair import SizeRepair
from planner.results import SearchResult
from planner.solver import ExactSolver
from search_spaces.plan import Plan

__all__ = [
    "Progress",
    "Proposal",
    "SearchBackend",
    "directions",
    "exact_answer",
    "exact_seed",
    "make_repair",
    "make_sampler",
    "score_proposal",
]

log = logging.getLogger("compplan")

# `progress(finished trials counted, best so far)`, called after each trial.
Progress = Callable[[int, dict[str, Any] | None], None]


class SearchBackend(abc.ABC):
    """Runs a problem's trials somewhere and returns a `SearchResult`.

    Call order: construct with the problem, its config and the shared parts (the repair, the
    exact seed); `run` as often as wanted (each run resumes what the last left: finished trials
    are kept wherever the backend keeps them); `result` rebuilds the answer over every trial kept.

    Contract (tests/planner/test_backend_contract.py runs it over every backend):
    - every trial's plan keeps the size budget when repair is on and the budget is reachable;
    - the result's `best` is the best feasible trial by the objective, its `best_plan` that
      trial's plan, and the Pareto front holds only feasible trials;
    - a run of n trials on an empty study leaves n trials; the exact seed is the first one;
    - a backend that cannot do what the config asks refuses it with `PlannerError` at
      construction, never silently.
    """

    name: str = ""

    @abc.abstractmethod
    def run(
        self,
        n_trials: int | None = 100,
        timeout: float | None = None,
        *,
        new_trials: int | None = None,
        progress: Progress | None = None,
    ) -> SearchResult:
        """Run until the study holds `n_trials` trials (or `timeout` seconds pass); or, with
        `new_trials`, run exactly that many here whatever it holds. Returns the result over
        every trial kept."""

    @abc.abstractmethod
    def result(self) -> SearchResult:
        """The result over every trial kept so far."""


def make_sampler(name: str, seed: int):
    """The Optuna sampler called `name` ("tpe", "nsga2", "random"), seeded; both backends
    propose with it (Ray through `OptunaSearch`)."""
    import optuna

    if name == "tpe":
        # Multivariate: one joint sample per trial instead of one model per parameter
        # (about 1.6× less sampler time at ~50 parameters).
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def directions(config: SearchConfig, problem: Problem) -> list[str]:
    """The study's directions: the proxy, and with --pareto also size (and latency)."""
    if not config.pareto:
        return ["minimize"]
    return ["minimize"] * (3 if problem.latency is not None else 2)


def make_repair(config: SearchConfig, problem: Problem) -> Repair | None:
    """The budget repair every proposal goes through: size repair with a size budget, then
    latency repair with a latency budget (`planner.latency_repair`); None when off or without
    either budget."""
    if not config.repair:
        return None
    size = latency = None
    if problem.budget.size_bytes is not None:
        # Filling to the edge would collapse a multi-objective front onto the budget.
        size = SizeRepair(
            problem.study_space,
            problem.proxy.table.errors,
            problem.budget.size_bytes * 8,
            fill=not config.pareto,
        )
    if problem.budget.latency_ms is not None and problem.latency is not None:
        latency = LatencyRepair(problem)
    return chain(size, latency)


def exact_answer(config: SearchConfig, solver: ExactSolver) -> dict[str, Any]:
    """The exact solver's answer (`ExactSolver.solve`'s dict), or {"note": why there is none}:
    not asked for, a Pareto search (the solver answers one budget), or no plan at keep 1 meets
    the budgets. Either way it goes into the search's result, so that a user reads why."""
    if not config.seed_exact:
        return {"note": "not asked for (seed_exact is off)"}
    if config.pareto:
        return {"note": "a Pareto search is not seeded: the exact solver answers one budget"}
    try:
        return solver.solve()
    except BudgetError as error:
        log.info("not seeding with the exact solver: %s", error)
        return {"note": f"{error}; the search ran unseeded"}


def exact_seed(config: SearchConfig, solver: ExactSolver) -> dict[str, Any] | None:
    """The exact solver's answer to seed a new study with, or None (`exact_answer` says why)."""
    answer = exact_answer(config, solver)
    return answer if "params" in answer else None


@dataclass(frozen=True)
class Proposal:
    """A proposal scored: repair's changes, the plan and its evaluation."""

    repaired: dict[str, Any]
    plan: Plan
    evaluation: Evaluation

    def metrics(self) -> dict[str, Any]:
        """What a trial records about it, whichever backend ran it."""
        e = self.evaluation
        return {
            "proxy": e.proxy,
            "feasible": e.feasible,
            "size_bytes": e.size_bytes,
            "latency_ms": e.latency_ms,
            "macs": e.macs,
            "repaired": json.dumps(self.repaired),
        }


def score_proposal(problem: Problem, repair: Repair | None, params: Mapping[str, Any]) -> Proposal:
    """Repair `params` (when on), decode and evaluate the plan."""
    repaired = repair(params) if repair is not None else {}
    plan = problem.decode({**params, **repaired})
    (evaluation,) = problem.evaluate([plan])
    return Proposal(repaired=repaired, plan=plan, evaluation=evaluation)
