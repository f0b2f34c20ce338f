"""Budget repair: move a sampled plan's layers along their frontiers until it fits the size budget.

A sampler proposes one frontier position per layer (`planner.study_space`). Most proposals miss
a tight size budget, and a sampler learns the budget's edge slowly from constraint values alone:
after 1000 trials TPE and NSGA-II were still 28–110% above the exact optimum on ResNet-18 and
ResNet-50 at 20× and 40×. Repair turns each proposal into a nearby plan on the budget's edge,
the way a knapsack's greedy heuristic would, keeping the proposal's keep ratios and activation
bits:

1. shrink: while the plan is over budget, take the single-layer step down its frontier that adds
   the least proxy per byte saved;
2. fill (single-objective studies only): while some step up fits in the remaining bytes, take
   the one that removes the most proxy per byte added.

0. (before both) where not even every layer's smallest option fits at the proposal's keep
   ratios, lower every searched group's keep ratio a step at a time until it does.

The sampler still decides where a plan starts, so its proposals stay diverse (which layers get
the bytes is its choice, not the heuristic's); repair only spends or recovers the bytes the
proposal got wrong. Sizes are computed at the (possibly lowered) keep ratios, with the same size
convention as the budget, so a repaired plan is feasible whenever the space can meet the budget
at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from predictors.size import PlanBatch, _LayerTable, layer_bits

__all__ = ["SizeRepair"]


class SizeRepair:
    """Repairs study parameters against a size budget (see the module docstring).

    Args:
        study_space: the study's parameters (`planner.study_space.StudySpace`).
        errors: layer → proxy error of each of its options (`ProxyTable.errors`).
        limit_bits: the size budget in bits.
        fill: also spend leftover bytes on the best upgrades (step 2).
    """

    def __init__(
        self,
        study_space,
        errors: Mapping[str, np.ndarray],
        limit_bits: float,
        *,
        fill: bool = True,
    ):
        self.study_space = study_space
        self.graph = study_space.graph
        self.limit_bits = float(limit_bits)
        self.fill = fill
        self._table = _LayerTable.of(self.graph)
        self.names = list(self.graph.layers)
        frontier = study_space.frontier
        self._arrays = study_space.frontier_arrays()
        rows = self._arrays["method"].shape[0]
        self.errors = np.full((len(self.names), rows), np.inf)
        for j, name in enumerate(self.names):
            indices = frontier[name]
            self.errors[j, : len(indices)] = np.asarray(errors[name])[indices]

    def layer_sizes(self, keep: np.ndarray) -> np.ndarray:
        """Bits of every frontier option of every layer (layers × positions) at keep ratios
        `keep` (one per group); padding positions are infinite."""
        rows = self._arrays["method"].shape[0]
        batch = PlanBatch(**self._arrays, keep=np.broadcast_to(keep, (rows, len(keep))).copy())
        sizes = layer_bits(self.graph, batch, table=self._table, parts=False)["total"]
        sizes = sizes.T.astype(float)
        sizes[~np.isfinite(self.errors)] = np.inf
        return sizes

    def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters repair changes (an option's new frontier position, a group's lower keep
        ratio); empty when the proposal needs no change."""
        space = self.study_space
        keep = np.ones(len(self.graph.groups))
        for gid, choices in space.space.group_keep.items():
            keep[gid] = params.get(f"group{gid}/keep", choices[0])
        limit = self.limit_bits - self.graph.kept_bits
        proposed = keep.copy()
        sizes = self.layer_sizes(keep)
        # Step 0: where not even every layer's smallest option fits at the proposal's keep
        # ratios, lower them a step at a time (every searched group at once) until it does.
        while sizes.min(axis=1).sum() > limit and self._lower_keeps_(keep, params):
            sizes = self.layer_sizes(keep)
        start = np.array([params.get(f"{name}/option", 0) for name in self.names])
        positions = repair_positions(self.errors, sizes, start, limit, fill=self.fill)
        changes: dict[str, Any] = {
            f"{self.names[j]}/option": int(positions[j]) for j in np.flatnonzero(positions != start)
        }
        for gid in np.flatnonzero(keep != proposed):
            changes[f"group{gid}/keep"] = float(keep[gid])
        return changes

    def _lower_keeps_(self, keep: np.ndarray, params: Mapping[str, Any]) -> bool:
        """Move each searched group's keep ratio to its next lower choice, in place; False when
        every one is at its lowest already."""
        lowered = False
        for gid, choices in self.study_space.space.group_keep.items():
            if f"group{gid}/keep" not in self.study_space.distributions:
                continue
            lower = [c for c in choices if c < keep[gid]]
            if lower:
                keep[gid] = max(lower)
                lowered = True
        return lowered


def repair_positions(
    errors: np.ndarray,
    sizes: np.ndarray,
    start: np.ndarray,
    limit: float,
    *,
    fill: bool = True,
    trade: bool = True,
) -> np.ndarray:
    """Greedy knapsack repair of one position per row.

    Args:
        errors, sizes: layers × positions; a position past a layer's end is infinite in both.
        start: each layer's proposed position.
        limit: the most the chosen sizes may sum to.
        fill: after shrinking, also take upgrades that fit, then trade bytes between layers
            while it pays (`trade`).

    Returns:
        the repaired positions. When even every layer's smallest option is over `limit`, they
        are the smallest options (the plan stays infeasible and the caller's constraint says so).
    """
    positions = start.copy()
    rows = np.arange(len(positions))
    total = sizes[rows, positions].sum()

    def shrink_step(layer: int) -> tuple[float, int]:
        c = positions[layer]
        saved = sizes[layer, c] - sizes[layer, c + 1 :]
        added = errors[layer, c + 1 :] - errors[layer, c]
        ok = np.isfinite(saved) & (saved > 0)
        if not ok.any():
            return np.inf, -1
        ratio = np.where(ok, np.maximum(added, 0) / np.where(ok, saved, 1), np.inf)
        j = int(ratio.argmin())
        return float(ratio[j]), c + 1 + j

    if total > limit:
        best = np.array([shrink_step(layer) for layer in rows], dtype=object)
        ratios = np.array([b[0] for b in best], dtype=float)
        targets = np.array([b[1] for b in best])
        while total > limit:
            layer = int(ratios.argmin())
            if not np.isfinite(ratios[layer]):
                break
            total += sizes[layer, targets[layer]] - sizes[layer, positions[layer]]
            positions[layer] = targets[layer]
            ratios[layer], targets[layer] = shrink_step(layer)
    if not fill or total > limit:
        return positions

    def grow_step(layer: int, slack: float) -> tuple[float, int]:
        c = positions[layer]
        if c == 0:
            return -np.inf, -1
        added = sizes[layer, :c] - sizes[layer, c]
        gain = errors[layer, c] - errors[layer, :c]
        ok = (added <= slack) & (gain > 0)
        if not ok.any():
            return -np.inf, -1
        # A step that frees bytes and lowers the error is always worth taking first.
        ratio = np.where(ok, gain / np.maximum(added, 1e-9), -np.inf)
        j = int(ratio.argmax())
        return float(ratio[j]), j

    slack = limit - total
    best = [grow_step(layer, slack) for layer in rows]
    ratios = np.array([b[0] for b in best], dtype=float)
    targets = np.array([b[1] for b in best])
    while True:
        layer = int(ratios.argmax())
        if not np.isfinite(ratios[layer]):
            break
        added = sizes[layer, targets[layer]] - sizes[layer, positions[layer]]
        if added > slack:
            # Cached steps only lose feasibility as the slack shrinks: recompute this one.
            ratios[layer], targets[layer] = grow_step(layer, slack)
            continue
        positions[layer] = targets[layer]
        slack -= added
        ratios[layer], targets[layer] = grow_step(layer, slack)
    if not trade:
        return positions
    filled = positions
    positions = _exchange(errors, sizes, filled.copy(), limit)
    if np.array_equal(positions, filled):
        return positions
    # Trades can leave bytes over: fill them (without trading again).
    return repair_positions(errors, sizes, positions, limit, fill=True, trade=False)


def _exchange(
    errors: np.ndarray,
    sizes: np.ndarray,
    positions: np.ndarray,
    limit: float,
    *,
    rounds: int = 200,
    tries: int = 4,
) -> np.ndarray:
    """Step 3: trade bytes between layers while it pays. Each round goes through the upgrades
    with the most proxy removed per byte added (`tries` of them, whatever their size), frees the
    bytes one lacks by the cheapest steps down in other layers, and keeps the first trade that
    lowers the summed error. A plan where no trade pays is close to the knapsack's LP optimum,
    where every layer's last byte is worth the same; from a random proposal, shrinking and
    filling alone stop well short of it (a layer the proposal made too small stays small)."""
    rows = np.arange(len(positions))
    columns = np.arange(sizes.shape[1])[None, :]
    for _ in range(rounds):
        current_size = sizes[rows, positions][:, None]
        current_error = errors[rows, positions][:, None]
        slack = limit - current_size.sum()
        added = sizes - current_size
        gain = current_error - errors
        up = (columns < positions[:, None]) & (added > 0) & (gain > 0)
        if not up.any():
            break
        ratio = np.where(up, gain / np.where(up, added, 1), -np.inf).ravel()
        candidates = np.argsort(-ratio)[: min(tries, int(up.sum()))]
        for flat in candidates:
            layer, target = np.unravel_index(int(flat), up.shape)
            traded = _free_bytes(errors, sizes, positions, added[layer, target] - slack, layer)
            if traded is not None and traded[1] < gain[layer, target]:
                positions = traded[0]
                positions[layer] = target
                break
        else:
            break
    return positions


def _free_bytes(
    errors: np.ndarray, sizes: np.ndarray, positions: np.ndarray, need: float, keep_layer: int
) -> tuple[np.ndarray, float] | None:
    """Positions that free at least `need` bytes by steps down in layers other than
    `keep_layer`, cheapest proxy per byte first, and the proxy they add; None if they cannot."""
    rows = np.arange(len(positions))
    columns = np.arange(sizes.shape[1])[None, :]
    trial = positions.copy()
    loss = 0.0
    while need > 0:
        saved = sizes[rows, trial][:, None] - sizes
        cost = np.maximum(errors - errors[rows, trial][:, None], 0)
        down = (columns > trial[:, None]) & (saved > 0) & np.isfinite(saved)
        down[keep_layer] = False
        if not down.any():
            return None
        # The cheapest byte first, unless one step frees all that is lacking for less.
        per_byte = np.where(down, cost / np.where(down, saved, 1), np.inf)
        whole = np.where(down & (saved >= need), cost, np.inf)
        if whole.min() <= per_byte.min() * need:
            layer, target = np.unravel_index(int(whole.argmin()), whole.shape)
        else:
            layer, target = np.unravel_index(int(per_byte.argmin()), per_byte.shape)
        loss += cost[layer, target]
        need -= saved[layer, target]
        trial[layer] = target
    return trial, loss
