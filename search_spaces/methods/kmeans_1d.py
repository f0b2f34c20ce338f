"""Lloyd's k-means in one dimension, exactly, on sorted values.

In one dimension the nearest centroid of a value is found by a search among the sorted
centroids' midpoints, and every cluster is a run of the sorted values, so one sort and one prefix
sum make each Lloyd iteration O(k log n) instead of O(n·k). A searched plan's VQ with m = 1 (or
LR²VQ with d̃ = 1) clusters scalars this way: it is non-uniform scalar quantization, with k up to
thousands. All values take part in every iteration; no sample is needed.

The iterations are those of `lr2vq.kmeans` on the same data: the same assignment rule (nearest
centroid; a value on a midpoint goes to the lower centroid, the first of equals), the same update
(a cluster's mean), the same annealing in distribution (the noise of n points summed is one
Gaussian draw of n times their variance), and empty clusters re-seeded at the values worst
served by the codebook.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lloyd_1d", "nearest_1d"]

# Plain Lloyd steps after the annealed ones, until no centroid moves: each costs O(k log n) here,
# and one-dimensional Lloyd creeps (a centroid moves a little each step for many steps).
_SETTLING_ITERATIONS = 200


def nearest_1d(values: Tensor, centroids: Tensor) -> Tensor:
    """Each value's nearest centroid's index, for centroids sorted in increasing order."""
    midpoints = (centroids[1:].double() + centroids[:-1].double()) / 2
    return torch.searchsorted(midpoints, values.double().contiguous(), right=False)


def lloyd_1d(
    values: Tensor,
    centroids: Tensor,
    *,
    iterations: int,
    noise_std: float | None,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Lloyd's iterations on scalars.

    Args:
        values: (n,) the data.
        centroids: (k,) the seeds (k-means++), in any order.
        iterations: Lloyd iterations.
        noise_std: std of the annealing noise added to each value in the updates (it shrinks as
            (1 − t/T)^0.5); None: no annealing.
        generator: draws the noise.

    Returns:
        (centroids (k,) float32 in increasing order, codes (n,) int64: each value's nearest).
    """
    n, k = values.shape[0], centroids.shape[0]
    order = values.argsort()
    ordered = values[order].double().contiguous()
    prefix = torch.cat([ordered.new_zeros(1), ordered.cumsum(0)])
    centers = centroids.double().sort().values
    ends = ordered.new_tensor([n], dtype=torch.int64)
    starts = ordered.new_zeros(1, dtype=torch.int64)
    for t in range(iterations + _SETTLING_ITERATIONS):
        # Cluster i holds the values in (midpoint i−1, midpoint i]: a run of the sorted values.
        bounds = torch.searchsorted(ordered, (centers[1:] + centers[:-1]) / 2, right=True)
        first, last = torch.cat([starts, bounds]), torch.cat([bounds, ends])
        counts = (last - first).double()
        sums = prefix[last] - prefix[first]
        if noise_std is not None and t < iterations:
            scale = (1.0 - t / iterations) ** 0.5
            draws = torch.randn(k, generator=generator, dtype=torch.float64)
            sums = sums + scale * noise_std * counts.sqrt() * draws
        empty = counts == 0
        updated = torch.where(empty, centers, sums / counts.clamp(min=1))
        if empty.any():
            ranked = updated.sort().values
            errors = (ordered - ranked[nearest_1d(ordered, ranked)]).square()
            updated[empty] = ordered[errors.topk(int(empty.sum())).indices]
        updated = updated.sort().values
        settled = t >= iterations and torch.equal(updated, centers)
        centers = updated
        if settled:
            break
    fitted = centers.float()
    codes = torch.empty(n, dtype=torch.int64)
    codes[order] = nearest_1d(ordered, fitted)
    return fitted, codes
