"""`ExactSolver`: the proxy's optimum under the budgets, and the balanced plans.

The proxy is a sum over layers and size is additive, so with every keep ratio at 1 the best plan
under a size budget is a multiple-choice knapsack (`planner.exact.solve_choices`, a MILP). A
latency budget joins it exactly when the latency predictor is additive (a sum over layers plus a
per-model constant: `LatencyPredictor.additive`); each choice's latency is then the predictor's
change when that layer alone takes it. A predictor of a runtime with int8 kernels is not additive:
it prices the boundaries between int8 and fp32 layers. Then the solver budgets with its additive
part (each layer priced inside a region of its own kernel class), prices the answer with the full
predictor, and, while that is over the budget, takes the excess off its latency limit and solves
again (at most `MAX_RESOLVES` times, and not past what keep 1 reaches; the answer says how many,
and `feasible` what the full predictor found: the search's repair prunes from there). A pairwise
term per adjacent pair in the MILP would be exact, at a quadratic number of variables; the resolves
are measured in `scripts/bench_runtime_latency.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from planner.budgets import BudgetError
from planner.exact import InfeasibleBudget, solve_choices
from planner.problem import Problem
from planner.repair import SizeRepair

__all__ = ["BALANCE_PENALTY", "ExactSolver"]

# `solve(max_layer_ratio=...)`: the cost of an option past the cap, above any layer's proxy.
BALANCE_PENALTY = 1e3
# Re-solves with a tightened latency limit, after the full predictor prices an answer over it.
MAX_RESOLVES = 4


class ExactSolver:
    """Exact answers over a `Problem`'s separable part (keep ratios at 1)."""

    def __init__(self, problem: Problem):
        self.problem = problem

    def solve(self, *, max_layer_ratio: float | None = None) -> dict[str, Any]:
        """The proxy's optimum: each layer an option on its frontier and its activation bits.

        Every keep ratio stays at 1 (pruning couples the layers of a group and their consumers,
        which a per-layer knapsack cannot express). The size budget is exact, and so is a latency
        budget with an additive predictor (otherwise module docstring). The answer is evaluated
        like any trial, so `feasible` also covers MACs; `resolves` says how often it was solved
        again under a tightened latency limit.

        `max_layer_ratio` c keeps every layer within c times the size budget's overall
        compression ratio: options compressing a layer further cost a penalty above any proxy,
        so they are taken only where nothing else meets the budgets. The proxy adds layer errors
        as if they did not compound; this "balanced" optimum is its hedge against plans that
        wipe out a few layers (see `planner.refine`).

        Returns:
            {"plan", "params", "proxy", "size_bytes", "latency_ms", "feasible", "seconds",
            "resolves"}.

        Raises:
            BudgetError: no choice at keep 1 meets the budgets, or a latency budget with a
                predictor that is not additive and has no additive part.
        """
        problem = self.problem
        study_space, budget = problem.study_space, problem.budget
        names = list(problem.graph.layers)
        acts = {name: list(problem.space.layers[name].act_bits) for name in names}
        errors = problem.proxy.table.errors
        if max_layer_ratio is not None and budget.size_bytes is not None:
            errors = self.capped_errors(max_layer_ratio)
        costs, sizes = {}, {}
        for name in names:
            frontier = study_space.frontier[name]
            weight = np.asarray(errors[name])[frontier]
            act = np.array([problem.proxy.activation_error(name, bits) for bits in acts[name]])
            # Choice index = position · len(acts) + act index.
            costs[name] = (weight[:, None] + act[None, :]).ravel()
            sizes[name] = np.repeat(problem.options[name].bits[frontier], len(acts[name]))
        limits, uses, base_ms = {}, {}, 0.0
        if budget.size_bytes is not None:
            limits["size"] = budget.size_bytes * 8 - problem.graph.kept_bits
            uses["size"] = sizes
        if budget.latency_ms is not None:
            base_ms, deltas = self.latency_deltas(acts)
            limits["latency"] = budget.latency_ms - base_ms
            uses["latency"] = deltas
        seconds, resolves, answer = 0.0, 0, None
        while True:
            try:
                solution = solve_choices(costs, uses, limits)
            except InfeasibleBudget as error:
                if answer is None:
                    raise self._refusal(error, base_ms) from None
                break  # tightened past what keep 1 reaches: the last answer, over the budget
            seconds += solution.seconds
            positions, act_bits = {}, {}
            for name, choice in solution.chosen.items():
                position, act = divmod(choice, len(acts[name]))
                positions[name] = study_space.frontier[name][position]
                act_bits[name] = acts[name][act]
            params = study_space.params_of(positions, act_bits=act_bits)
            plan = problem.final_plan(params, source="compplan exact", objective="proxy")
            (evaluation,) = problem.evaluate([plan])
            answer = {
                "plan": plan,
                "params": params,
                "proxy": evaluation.proxy,
                "size_bytes": evaluation.size_bytes,
                "latency_ms": evaluation.latency_ms,
                "feasible": evaluation.feasible,
            }
            over = self._latency_overshoot(evaluation.latency_ms)
            if over <= 0 or resolves == MAX_RESOLVES:
                break
            # The additive part priced no boundary between kernel classes: what the full
            # predictor finds over the budget comes off the solver's latency limit.
            limits["latency"] -= over
            resolves += 1
        return {**answer, "seconds": seconds, "resolves": resolves}

    def _additive_latency(self):
        """The latency predictor the knapsack prices choices with: itself when additive, else
        its additive part (`LatencyPredictor.additive_part`).

        Raises:
            BudgetError: a predictor (a user's own object) that is neither.
        """
        latency = self.problem.latency
        if getattr(latency, "additive", True):
            return latency
        if hasattr(latency, "additive_part"):
            return latency.additive_part()
        raise BudgetError(
            f"the exact solver needs an additive latency predictor, or one with an additive "
            f"part, and the {getattr(latency, 'kind', type(latency).__name__)} predictor is "
            "neither; the search runs unseeded"
        )

    def _latency_overshoot(self, latency_ms: float | None) -> float:
        """How far the full predictor prices an answer over the latency budget (ms; 0 when it
        is within it, or when the predictor is additive and the solver's pricing exact)."""
        budget, latency = self.problem.budget, self.problem.latency
        if budget.latency_ms is None or latency_ms is None or getattr(latency, "additive", True):
            return 0.0
        return max(0.0, latency_ms - budget.latency_ms)

    def _refusal(self, error: InfeasibleBudget, base_ms: float) -> BudgetError:
        """`error` in the budget's own units (bytes, ms): the solver's limits are relative
        (what the layers' options may add to the bytes kept whole, to the base plan's latency)
        and would read as meaningless deltas."""
        budget, graph = self.problem.budget, self.problem.graph
        if error.budget == "size":
            return BudgetError(
                f"the size budget {budget.size_bytes:,.0f} bytes is below the least any plan "
                f"with every keep ratio at 1 reaches ({(graph.kept_bits + error.least) / 8:,.0f} "
                "bytes); only pruning goes lower"
            )
        if error.budget == "latency":
            return BudgetError(
                f"the latency budget {budget.latency_ms:g} ms is below the least any plan with "
                f"every keep ratio at 1 reaches ({base_ms + error.least:.4g} ms predicted); only "
                "pruning goes lower"
            )
        return BudgetError(f"{error} with every keep ratio at 1")

    def capped_errors(self, cap: float) -> dict[str, np.ndarray]:
        """The proxy's option errors, plus `BALANCE_PENALTY` for every option that compresses
        its layer (at keep 1) more than `cap` times the size budget's overall ratio."""
        problem = self.problem
        overall = problem.graph.baseline_bits / (8 * problem.budget.size_bytes)
        errors = {}
        for name, layer in problem.graph.layers.items():
            floor = 32 * (layer.params + layer.batchnorm_params) / (cap * overall)
            bits = problem.options[name].bits
            errors[name] = np.asarray(problem.proxy.table.errors[name]) + np.where(
                bits < floor, BALANCE_PENALTY, 0.0
            )
        return errors

    def balanced(self, cap: float, start: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The best plan by proxy with every layer within `cap` times the overall ratio, as far
        as the budgets allow: `solve(max_layer_ratio=cap)` (keep 1) when it keeps every budget;
        otherwise `start` (a trial's parameters, with its keep ratios and activation bits)
        repaired against the capped errors. None when neither keeps the budgets (or there is no
        size budget).

        Returns:
            {"params", "proxy", "size_bytes", "feasible": True} or None.
        """
        problem = self.problem
        if problem.budget.size_bytes is None:
            return None
        with contextlib.suppress(BudgetError):
            answer = self.solve(max_layer_ratio=cap)
            if answer["feasible"]:
                return answer
        if start is None:
            return None
        repair = SizeRepair(
            problem.study_space,
            self.capped_errors(cap),
            problem.budget.size_bytes * 8,
            fill=True,
        )
        params = {**start, **repair(start)}
        (evaluation,) = problem.evaluate([problem.decode(params)])
        if not evaluation.feasible:
            return None
        return {
            "params": params,
            "proxy": evaluation.proxy,
            "size_bytes": evaluation.size_bytes,
            "feasible": True,
        }

    def latency_deltas(self, acts: dict[str, list[int]]) -> tuple[float, dict[str, np.ndarray]]:
        """The predicted latency of the base plan (every layer at its first frontier option and
        first activation bits, keep 1) and, per layer, the change when that layer alone takes
        each (position, activation bits) choice, in the order `solve` numbers them; by the
        predictor's additive part (`LatencyPredictor.additive_part`: each layer priced as if
        its neighbours shared its kernel class)."""
        from predictors.latency.features import LatencyBatch
        from predictors.size import PlanBatch

        problem = self.problem
        arrays = problem.study_space.frontier_arrays()
        names = list(problem.graph.layers)
        base_act = np.array([acts[name][0] for name in names])
        rows_of = [
            (j, position, bits)
            for j, name in enumerate(names)
            for position in range(len(problem.study_space.frontier[name]))
            for bits in acts[name]
        ]
        n = len(rows_of) + 1  # row 0 is the base plan
        batch = {key: np.repeat(values[:1], n, axis=0) for key, values in arrays.items()}
        act = np.repeat(base_act[None, :], n, axis=0)
        for row, (j, position, bits) in enumerate(rows_of, start=1):
            for key, values in arrays.items():
                batch[key][row, j] = values[position, j]
            act[row, j] = bits
        keep = np.ones((n, len(problem.graph.groups)))
        latency = self._additive_latency().predict(
            problem.graph, LatencyBatch(plans=PlanBatch(**batch, keep=keep), act_bits=act)
        )
        deltas: dict[str, list[float]] = {name: [] for name in names}
        for row, (j, _, _) in enumerate(rows_of, start=1):
            deltas[names[j]].append(latency[row] - latency[0])
        return float(latency[0]), {name: np.asarray(d) for name, d in deltas.items()}
