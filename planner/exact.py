"""The exact backend: the best separable plan under additive budgets, as a multiple-choice knapsack.

With keep ratios fixed, a plan is one option per layer; its size is the sum of its options' sizes
and the proxy the sum of their distortions (`planner.options`, `planner.proxy`). Picking one option
per layer to minimize the summed distortion under a size budget (and, optionally, other additive
budgets such as a lookup table's per-layer latencies) is a multiple-choice knapsack, solved here as
a 0/1 integer program with `scipy.optimize.milp` (HiGHS), as HAWQ-V3 solves its bit allocation.
Its answer seeds the Optuna studies and is the reference for their optimality gap.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

__all__ = ["ExactSolution", "InfeasibleBudget", "solve_choices", "undominated"]


class InfeasibleBudget(ValueError):
    """No choice of options meets the budgets.

    Attributes:
        budget: the budget even the least choice misses (None: the solver found none).
        least: that least choice's summed use, in the units of `solve_choices`' `limits`.
    """

    def __init__(self, message: str, *, budget: str | None = None, least: float = 0.0):
        super().__init__(message)
        self.budget, self.least = budget, least


@dataclass(frozen=True)
class ExactSolution:
    """The optimum: layer → chosen option index, its objective and resource totals.

    Attributes:
        chosen: layer name → option index.
        objective: the summed cost of the chosen options.
        totals: budget name → the chosen options' summed use.
        seconds: the solver's wall time.
        status: HiGHS' message.
    """

    chosen: Mapping[str, int]
    objective: float
    totals: Mapping[str, float]
    seconds: float
    status: str


def solve_choices(
    costs: Mapping[str, np.ndarray],
    uses: Mapping[str, Mapping[str, np.ndarray]],
    limits: Mapping[str, float],
    *,
    time_limit: float | None = None,
) -> ExactSolution:
    """One option per layer minimizing the summed cost, with each budget's summed use ≤ its limit.

    Args:
        costs: layer → cost of each of its options.
        uses: budget name → layer → each option's use of that budget (same shapes as `costs`).
        limits: budget name → the most the chosen options may use in total.
        time_limit: seconds HiGHS may take (None: no limit).

    Raises:
        InfeasibleBudget: no choice meets the budgets; the message gives the least reachable use.
    """
    _check_shapes(costs, [uses[budget] for budget in limits])
    if any(len(values) == 0 for values in costs.values()):
        raise ValueError("every layer needs at least one option")
    # Dominated options (another is no worse in cost and every budget) never help: dropping
    # them first makes the program several times smaller.
    kept = {name: undominated(costs[name], [uses[b][name] for b in limits]) for name in costs}
    full_costs, full_uses = costs, uses
    costs = {name: np.asarray(costs[name], dtype=float)[kept[name]] for name in costs}
    uses = {
        b: {name: np.asarray(uses[b][name], dtype=float)[kept[name]] for name in costs}
        for b in limits
    }
    names = list(costs)
    sizes = [len(costs[name]) for name in names]
    for budget, limit in limits.items():
        least = sum(float(np.min(uses[budget][name])) for name in names)
        if least > limit * (1 + 1e-12):
            raise InfeasibleBudget(
                f"the {budget} budget {limit:g} is below the least any plan reaches ({least:g})",
                budget=budget,
                least=least,
            )
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    c = np.concatenate([np.asarray(costs[name], dtype=float) for name in names])
    # Scale the cost so that HiGHS' absolute tolerances mean the same for every model.
    scale = max(float(np.abs(c).max()), 1e-30)
    rows, cols = [], []
    for i, (start, stop) in enumerate(itertools.pairwise(offsets)):
        rows.extend([i] * (stop - start))
        cols.extend(range(start, stop))
    one_each = csr_array((np.ones(len(cols)), (rows, cols)), shape=(len(names), len(c)))
    constraints = [LinearConstraint(one_each, 1, 1)]
    budget_names = list(limits)
    for budget in budget_names:
        row = np.concatenate([np.asarray(uses[budget][name], dtype=float) for name in names])
        norm = max(float(np.abs(row).max()), 1e-30)
        constraints.append(LinearConstraint(row[None, :] / norm, -np.inf, limits[budget] / norm))
    options = {"disp": False, "mip_rel_gap": 1e-9}
    if time_limit is not None:
        options["time_limit"] = time_limit
    start = time.perf_counter()
    result = milp(
        c / scale,
        constraints=constraints,
        integrality=np.ones(len(c)),
        bounds=Bounds(0, 1),
        options=options,
    )
    seconds = time.perf_counter() - start
    if result.x is None:
        raise InfeasibleBudget(f"the solver found no plan within the budgets ({result.message})")
    x = np.round(result.x).astype(int)
    chosen = {
        name: int(kept[name][np.argmax(x[offsets[i] : offsets[i + 1]])])
        for i, name in enumerate(names)
    }
    totals = {
        budget: float(sum(full_uses[budget][name][chosen[name]] for name in names))
        for budget in budget_names
    }
    objective = float(sum(full_costs[name][chosen[name]] for name in names))
    return ExactSolution(chosen, objective, totals, seconds, str(result.message))


def undominated(cost: np.ndarray, uses: Sequence[np.ndarray]) -> np.ndarray:
    """Indices of the options no other option dominates (ties: the first of equals is kept)."""
    table = np.stack([np.asarray(cost, dtype=float), *[np.asarray(u, dtype=float) for u in uses]])
    n = table.shape[1]
    no_worse = (table[:, :, None] <= table[:, None, :]).all(axis=0)  # [a, b]: a ≤ b everywhere
    equal = (table[:, :, None] == table[:, None, :]).all(axis=0)
    earlier = np.arange(n)[:, None] < np.arange(n)[None, :]
    dominates = no_worse & (~equal | earlier)
    np.fill_diagonal(dominates, False)
    return np.flatnonzero(~dominates.any(axis=0))


def _check_shapes(costs: Mapping[str, np.ndarray], uses: Sequence[Mapping[str, np.ndarray]]):
    for use in uses:
        for name, values in costs.items():
            if len(use[name]) != len(values):
                raise ValueError(f"layer {name}: {len(use[name])} uses for {len(values)} options")
