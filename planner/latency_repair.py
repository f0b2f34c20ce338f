"""Latency repair: bring a sampled plan under the latency budget by pruning it further.

On a device without low-bit kernels, weights decode to dense floats, so only keep ratios and
activation quantizers move a plan's latency, and at keep 1 no plan is faster than the
uncompressed model. A budget under it (`--latency-budget x0.5`) is met only by pruning, which
the exact solver cannot seed (it fixes every keep at 1) and samplers rarely find alone: on
zoo:digits with a fitted network predictor, TPE met x0.5 (beside a 25× size budget) in none of
200 trials and x0.7 in none of 40, since a proposal must prune every group enough *and* leave
out the quantizers that cost time.

A proposal the predictor prices over the budget is repaired in two tries, each taking the
least pruning that fits:

1. with its own activation bits, every searched group's keep ratio lowered one step at a time
   (all groups at once, as `SizeRepair` lowers them for size);
2. if even the lowest keeps miss, the same from its proposed keeps with every layer's
   activation bits at the width the predictor prices fastest for the whole model.

If both miss, the second's lowest keeps are kept: the closest plan, scored as infeasible. Each
try prices all its candidates in one batch, so a repair costs two predictor calls. It runs after
size repair; lowering keeps only shrinks a plan, so a size-feasible proposal stays so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ChainedRepair", "LatencyRepair", "Repair", "chain"]

# A repair: a trial's parameters → the ones it changes (empty: none).
Repair = Callable[[Mapping[str, Any]], dict[str, Any]]


class LatencyRepair:
    """Repairs study parameters against a latency budget (see the module docstring).

    Args:
        problem: the search's `Problem`; its `latency` predictor and `budget.latency_ms` set.
    """

    def __init__(self, problem):
        if problem.latency is None or problem.budget.latency_ms is None:
            raise ValueError("latency repair needs a latency predictor and a latency budget")
        self.problem = problem
        self.study_space = problem.study_space
        self.limit_ms = float(problem.budget.latency_ms)
        space = self.study_space
        self.keep_keys = {
            f"group{gid}/keep": sorted(choices, reverse=True)
            for gid, choices in space.space.group_keep.items()
            if f"group{gid}/keep" in space.distributions
        }
        self.act_keys = {
            key: dist.choices for key, dist in space.distributions.items() if "/act_bits" in key
        }

    def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters repair changes; empty when the proposal fits the budget."""
        steps = self._pruned_steps(params)
        fits, changes = self._least_pruning(params, steps)
        if fits or changes is None:
            return {} if changes is None else changes
        fastest = self._fastest_act_bits(params)
        if not fastest:
            return changes
        _, more = self._least_pruning({**params, **fastest}, self._pruned_steps(params))
        return {**fastest, **(more or {})}

    def _pruned_steps(self, params: Mapping[str, Any]) -> list[dict[str, float]]:
        """The keep changes of lowering every searched group 0, 1, 2, ... steps below its
        proposed keep ratio (clamped at its lowest), up to where none moves further."""
        lowers = {}
        for key, choices in self.keep_keys.items():
            current = params.get(key, choices[0])
            lowers[key] = [c for c in choices if c < current]
        most = max((len(lower) for lower in lowers.values()), default=0)
        return [
            {key: lower[min(k, len(lower)) - 1] for key, lower in lowers.items() if lower and k}
            for k in range(most + 1)
        ]

    def _least_pruning(self, params, steps) -> tuple[bool, dict[str, Any] | None]:
        """(whether some step fits, the changes of the first that does, or of the last);
        (True, None) when the proposal fits as it is."""
        plans = [self.problem.decode({**params, **step}) for step in steps]
        latencies = self.problem.latency.predict(self.problem.graph, plans)
        for k, ms in enumerate(latencies):
            if ms <= self.limit_ms:
                return True, (None if k == 0 else steps[k])
        return False, steps[-1]

    def _fastest_act_bits(self, params: Mapping[str, Any]) -> dict[str, int]:
        """Every searched layer's activation bits at the one width (of those any layer
        allows) the predictor prices fastest for the whole model at the proposed keeps; empty
        if that is what the proposal has."""
        widths = sorted({bits for choices in self.act_keys.values() for bits in choices})
        candidates = [
            {key: bits for key, choices in self.act_keys.items() if bits in choices}
            for bits in widths
        ]
        if not candidates:
            return {}
        plans = [self.problem.decode({**params, **c}) for c in candidates]
        latencies = self.problem.latency.predict(self.problem.graph, plans)
        best = candidates[int(latencies.argmin())]
        return {key: bits for key, bits in best.items() if params.get(key) != bits}


class ChainedRepair:
    """Repairs run in turn, each on the parameters the ones before left (a class, not a
    closure, so that it pickles to Ray's workers with the problem)."""

    def __init__(self, repairs: list[Repair]):
        self.repairs = repairs

    def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for repair in self.repairs:
            changes.update(repair({**params, **changes}))
        return changes


def chain(*repairs: Repair | None) -> Repair | None:
    """One repair running the given ones in turn (`ChainedRepair`); the one itself when only
    one is given, None when none is."""
    present = [r for r in repairs if r is not None]
    if len(present) <= 1:
        return present[0] if present else None
    return ChainedRepair(present)
