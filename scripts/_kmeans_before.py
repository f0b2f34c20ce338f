"""k-means as it was before the speed work (commit 854565e), kept verbatim for
`scripts/bench_speed.py` to time side by side with `search_spaces.methods.lr2vq.kmeans`.

Not used by compplan itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Assignment computes a chunk × k distance matrix; this bounds it to ~256 MiB at k = 4096.
_CHUNK = 16384
# Initial noise std of the annealed updates, as a share of the latents' per-dimension std.
_ANNEAL_NOISE = 0.2


def _nearest(points: Tensor, centroids: Tensor) -> Tensor:
    codes = torch.empty(points.shape[0], dtype=torch.int64)
    c_sq = (centroids * centroids).sum(1)
    for start in range(0, points.shape[0], _CHUNK):
        chunk = points[start : start + _CHUNK]
        # ‖p − c‖² = ‖p‖² − 2p·c + ‖c‖²; ‖p‖² is the same for every c and can be dropped.
        distances = c_sq[None, :] - 2.0 * chunk @ centroids.T
        codes[start : start + _CHUNK] = distances.argmin(1)
    return codes


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    n = points.shape[0]
    first = torch.randint(n, (1,), generator=generator)
    centroids = [points[first]]
    closest = ((points - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point already coincides with a centroid
            pick = torch.randint(n, (1,), generator=generator)
        else:
            pick = torch.multinomial(closest / total, 1, generator=generator)
        centroids.append(points[pick])
        closest = torch.minimum(closest, ((points - points[pick]) ** 2).sum(1))
    return torch.cat(centroids)


def kmeans(
    points: Tensor, k: int, *, iterations: int = 25, anneal: bool = True, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """k-means++ seeded, optionally annealed k-means.

    Args:
        points: (n, d) float data; n ≥ k.
        k: clusters.
        iterations: Lloyd iterations.
        anneal: add shrinking Gaussian noise to the centroid updates (PQF).
        seed: seeds the k-means++ draws and the noise.

    Returns:
        (centroids (k, d), codes (n,)) with codes assigned to the final centroids.
    """
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    n = points.shape[0]
    if k > n:
        raise ValueError(f"k={k} clusters for only {n} points")
    centroids = _kmeans_plus_plus(points, k, generator)
    noise_std = _ANNEAL_NOISE * points.std(0, keepdim=True) if anneal else None
    for t in range(iterations):
        codes = _nearest(points, centroids)
        targets = points
        if noise_std is not None:
            scale = (1.0 - t / iterations) ** 0.5
            targets = points + scale * noise_std * torch.randn(points.shape, generator=generator)
        sums = torch.zeros_like(centroids).index_add_(0, codes, targets)
        counts = torch.bincount(codes, minlength=k).to(points.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            # Re-seed empty clusters at the points worst served by the current codebook.
            errors = ((points - centroids[codes]) ** 2).sum(1)
            worst = errors.topk(int(empty.sum())).indices
            centroids[empty] = points[worst]
    return centroids, _nearest(points, centroids)
