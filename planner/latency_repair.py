"""Latency repair: bring a sampled plan under the latency budget by pruning it further.

On a device without low-bit kernels, weights decode to dense floats, so only keep ratios and
activation quantizers move a plan's latency, and at keep 1 no plan is faster than the
uncompressed model. A budget under it (`--latency-budget x0.5`) is met only by pruning, which
the exact solver cannot seed (it fixes every keep at 1) and samplers rarely find alone, since a
proposal must prune every group enough *and* leave out the quantizers that cost time: in
`scripts/bench_latency_repair.py`, TPE without this repair met x0.5 in none of 60 trials on
zoo:digits (beside a 25× size budget) and in 20% on zoo:resnet18 (beside 1.2 MiB).

A proposal the predictor prices over the budget is pruned greedily, the way size repair shrinks
a plan: while it is over, lower by one step the keep ratio of the searched group that saves the
most predicted ms per unit of proxy it adds (`ProxyObjective.pruning_cost`), pricing every
group's step in one batch. If every group reaches its lowest keep and the plan still misses, the
same again from the proposed keeps with every layer's activation bits at the width the
predictor prices fastest for the whole model; if that misses too, its end is kept, the closest
plan, scored as infeasible. It runs after size repair; lowering keeps only shrinks a plan, so a
size-feasible proposal stays so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

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
        self.limit_ms = float(problem.budget.latency_ms)
        space = problem.study_space
        # Searched groups' keep choices, highest first.
        self.keep_keys = {
            f"group{gid}/keep": (gid, sorted(choices, reverse=True))
            for gid, choices in space.space.group_keep.items()
            if f"group{gid}/keep" in space.distributions
        }
        self.act_keys = {
            key: dist.choices for key, dist in space.distributions.items() if "/act_bits" in key
        }

    def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters repair changes; empty when the proposal fits the budget."""
        (ms,) = self._latencies([params])
        if ms <= self.limit_ms:
            return {}
        fits, changes = self._prune(params, ms)
        if fits:
            return changes
        fastest = self._fastest_act_bits(params)
        if not fastest:
            return changes
        start = {**params, **fastest}
        (ms,) = self._latencies([start])
        _, more = self._prune(start, ms)
        return {**fastest, **more}

    def _prune(self, params: Mapping[str, Any], ms: float) -> tuple[bool, dict[str, float]]:
        """Lower keeps greedily until the plan fits: (whether it does, the keep changes)."""
        keeps = {key: params.get(key, choices[0]) for key, (_, choices) in self.keep_keys.items()}
        changes: dict[str, float] = {}
        while ms > self.limit_ms:
            steps = []
            for key, (gid, choices) in self.keep_keys.items():
                lower = [c for c in choices if c < keeps[key]]
                if lower:
                    added = self.problem.proxy.pruning_cost(gid, lower[0])
                    added -= self.problem.proxy.pruning_cost(gid, keeps[key])
                    steps.append((key, lower[0], max(added, 1e-12)))
            if not steps:
                return False, changes
            current = {**params, **changes}
            latencies = self._latencies([{**current, key: keep} for key, keep, _ in steps])
            saved = ms - latencies
            # The most ms saved per proxy added; a step that saves nothing only if all are so.
            score = np.where(saved > 0, saved / np.array([a for _, _, a in steps]), -np.inf)
            best = int(score.argmax()) if np.isfinite(score).any() else int(saved.argmax())
            key, keep, _ = steps[best]
            keeps[key] = changes[key] = keep
            ms = float(latencies[best])
        return True, changes

    def _latencies(self, candidates: list[Mapping[str, Any]]) -> np.ndarray:
        """The predicted ms of each set of parameters, in one batch."""
        plans = [self.problem.decode(c) for c in candidates]
        return np.asarray(self.problem.latency.predict(self.problem.graph, plans), dtype=float)

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
        latencies = self._latencies([{**params, **c} for c in candidates])
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
