"""LR²VQ and PQ: cluster a layer's weight subvectors into a codebook.

A layer's weights are cut as PQF cuts them: each output row (length D = C_in/groups·K², in the
weight's C order, so m = K² is one kernel) into D/m subvectors of length m, giving an (N/m)×m
matrix X. LR²VQ represents each subvector as a d̃-dimensional latent times one layer-wide d̃×m
projection P, initialised from the SVD of X (the top d̃ right singular vectors), clusters the
latents Z = X·Pᵀ with k-means, and decodes a subvector as codebook[code]·P. With d̃ = m there is no
projection and this is plain PQ.

k-means is seeded with k-means++ and annealed as in PQF: assignments use the clean latents;
centroid updates use the latents plus Gaussian noise whose std shrinks as (1 − t/T)^0.5, which
lets centroids escape poor early assignments. As Faiss does (`max_points_per_centroid`), the
codebook is fitted on at most 256·k points drawn at random from a large layer, and every point
is then assigned to it: past a few hundred points per centroid more points move the centroids
little, and this bounds a layer's clustering cost by k instead of by its size. Each point's
nearest centroid is found by Faiss's exact search (the only part of Faiss used: its k-means has
no annealing and lost up to 18% of error on searched plans' layers). Scalars (m = 1,
or d̃ = 1: what a searched plan's many-cluster VQ often is) take an exact one-dimensional path
(`kmeans_1d`) that runs Lloyd on every value in O(k log n) an iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from search_spaces.knobs import effective_k
from search_spaces.methods.kmeans_1d import lloyd_1d
from search_spaces.methods.threads import one_thread

__all__ = ["POINTS_PER_CENTROID", "VQResult", "decode", "kmeans", "lr2vq", "subvectors"]

# Points the codebook is fitted on, per centroid (Faiss's default `max_points_per_centroid`).
POINTS_PER_CENTROID = 256
# k-means++ costs n·k distances, up to 256·k² on the fitting sample: from this k up, it seeds from a
# coreset of 16 points per centroid (`_seeds`), within 1% of the error of seeding from all of them
# on heavy-tailed 2-vectors (a uniform draw of as many points lost 40% there).
_CORESET_MIN_K = 1024
_CORESET_POINTS_PER_CENTROID = 16
# Scalars (m = 1 or d̃ = 1) run Lloyd in O(k log n) an iteration, so more k-means++ starts cost
# little and avoid the poor local optima one start can fall in: two starts, and eight in a layer
# of at most `_SMALL_SCALARS` values, where a cluster holds few values and a start's optimum varies
# most (two starts there lost up to 3.5% of error to the general path; eight, none).
_SCALAR_STARTS = 2
_SMALL_SCALAR_STARTS = 8
_SMALL_SCALARS = 65_536
# Initial noise std of the annealed updates, as a share of the latents' per-dimension std.
_ANNEAL_NOISE = 0.2


@dataclass(frozen=True)
class VQResult:
    """A layer's quantized form.

    Attributes:
        codes: (N/m,) int64 code of each subvector, in [0, k_eff).
        codebook: (k_eff, d̃) float32 centroids in latent space.
        projection: (d̃, m) float32 LR²VQ projection, or None for plain PQ (d̃ = m).
        shape: the weight's shape.
    """

    codes: Tensor
    codebook: Tensor
    projection: Tensor | None
    shape: tuple[int, ...]

    @property
    def k_eff(self) -> int:
        return self.codebook.shape[0]


def subvectors(weight: Tensor, m: int) -> Tensor:
    """(C_out, …) weight → (N/m, m) subvectors, each output row cut into D/m consecutive blocks."""
    rows = weight.reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"m={m} does not divide the row length {rows.shape[1]}")
    return rows.reshape(-1, m)


def decode(
    codes: Tensor, codebook: Tensor, projection: Tensor | None, shape: tuple[int, ...]
) -> Tensor:
    """The weight a VQ layer stands for: codebook[codes] (·P for LR²VQ), reshaped to `shape`."""
    latents = codebook[codes]
    vectors = latents if projection is None else latents @ projection
    return vectors.reshape(shape)


def _nearest(points: Tensor, centroids: Tensor) -> Tensor:
    """Each point's nearest centroid's index (an exact search; of near-equal distances, either),
    by Faiss's flat L2 index on one OpenMP thread, as all of k-means runs (`threads`): its kernels
    for few dimensions beat a chunked distance matrix and a k-d tree on every (points, k) a
    searched plan gives (scripts/bench_kmeans_faiss.py)."""
    import faiss  # imported here: only k-means needs it, and it loads its own OpenMP runtime

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids.detach().float().contiguous().numpy())
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        _, codes = index.search(points.detach().float().contiguous().numpy(), 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return torch.from_numpy(codes[:, 0])


def _kmeans_plus_plus(
    points: Tensor, k: int, generator: torch.Generator, weights: Tensor | None = None
) -> Tensor:
    """k-means++'s k seeds among `points`, each point's chance scaled by its weight if given."""
    n = points.shape[0]
    # ‖p − c‖² = ‖p‖² − 2p·c + ‖c‖²: one matrix-vector product a centroid (clamped, since
    # rounding can take a point's distance to itself a hair below zero).
    squared = (points * points).sum(1)

    def distances_to(index: int) -> Tensor:
        return torch.addmv(squared + squared[index], points, points[index], alpha=-2.0).clamp_(0.0)

    picks = torch.empty(k, dtype=torch.int64)
    if weights is None:
        picks[0] = torch.randint(n, (1,), generator=generator)
    else:
        picks[0] = torch.multinomial(weights, 1, generator=generator)
    closest = distances_to(int(picks[0]))
    draws = torch.rand(k, generator=generator)
    for i in range(1, k):
        # A draw proportional to the squared distance: the inverse of its cumulative sum
        # (a search in it, not a multinomial draw, which costs as much as the rest together).
        chances = closest if weights is None else closest * weights
        cumulative = chances.cumsum(0)  # non-negative terms: never decreasing, even rounded
        total = float(cumulative[-1])
        if total <= 0:  # every point already coincides with a centroid
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            target = draws[i : i + 1] * total
            pick = min(int(torch.searchsorted(cumulative, target, right=True)), n - 1)
        picks[i] = pick
        torch.minimum(closest, distances_to(pick), out=closest)
    return points[picks]


def _seeds(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeds from the fitting sample; from k = `_CORESET_MIN_K` up, from a lightweight
    coreset of it (Bachem et al., KDD 2018): `_CORESET_POINTS_PER_CENTROID`·k points drawn with
    chance half uniform, half by squared distance to the mean, and weighted by its inverse. Unlike
    a uniform draw, the coreset keeps the tails, where k-means++ puts many of its seeds."""
    n = points.shape[0]
    size = _CORESET_POINTS_PER_CENTROID * k
    if k < _CORESET_MIN_K or n <= size:
        return _kmeans_plus_plus(points, k, generator)
    spread = (points - points.mean(0)).square().sum(1).double()
    chance = 0.5 / n + 0.5 * spread / spread.sum().clamp(min=1e-300)
    drawn = torch.multinomial(chance, size, replacement=True, generator=generator)
    weights = (1.0 / chance[drawn]).float()
    return _kmeans_plus_plus(points[drawn], k, generator, weights)


def kmeans(
    points: Tensor,
    k: int,
    *,
    iterations: int = 25,
    anneal: bool = True,
    seed: int = 0,
    points_per_centroid: int | None = POINTS_PER_CENTROID,
) -> tuple[Tensor, Tensor]:
    """k-means++ seeded, optionally annealed k-means.

    Args:
        points: (n, d) float data; n ≥ k.
        k: clusters.
        iterations: Lloyd iterations.
        anneal: add shrinking Gaussian noise to the centroid updates (PQF).
        seed: seeds the k-means++ draws, the sample and the noise.
        points_per_centroid: fit the centroids on at most this many points per centroid, drawn
            without replacement (None: on all of them).

    Returns:
        (centroids (k, d), codes (n,)) with every point's code assigned to the final centroids.
    """
    with one_thread():  # see search_spaces.methods.threads
        return _kmeans(points, k, iterations, anneal, seed, points_per_centroid)


def _kmeans(
    points: Tensor,
    k: int,
    iterations: int,
    anneal: bool,
    seed: int,
    points_per_centroid: int | None,
) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    every_point = points.float()
    n = every_point.shape[0]
    if k > n:
        raise ValueError(f"k={k} clusters for only {n} points")
    points = every_point
    if points_per_centroid is not None and n > points_per_centroid * k:
        sample = torch.randperm(n, generator=generator)[: points_per_centroid * k]
        points = every_point[sample]
    if points.shape[1] == 1:
        return _kmeans_scalars(every_point[:, 0], points, k, iterations, anneal, generator)
    centroids = _seeds(points, k, generator)
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
    return centroids, _nearest(every_point, centroids)


def _kmeans_scalars(
    values: Tensor,
    sample: Tensor,
    k: int,
    iterations: int,
    anneal: bool,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """k-means of (n,) scalars by `kmeans_1d.lloyd_1d` on all of them, from the best of
    `_SCALAR_STARTS` (`_SMALL_SCALAR_STARTS` in a small layer) k-means++ seedings drawn on
    `sample` ((s, 1), a draw of the values; in one dimension, seeding on fewer points costs error
    that Lloyd does not win back)."""
    noise = _ANNEAL_NOISE * float(sample.std()) if anneal and sample.shape[0] > 1 else None
    best = None
    starts = _SMALL_SCALAR_STARTS if values.shape[0] <= _SMALL_SCALARS else _SCALAR_STARTS
    for _ in range(starts):
        seeds = _kmeans_plus_plus(sample, k, generator)[:, 0]
        centroids, codes = lloyd_1d(
            values, seeds, iterations=iterations, noise_std=noise, generator=generator
        )
        error = float((values.double() - centroids.double()[codes]).square().sum())
        if best is None or error < best[0]:
            best = (error, centroids, codes)
    return best[1][:, None], best[2]


def lr2vq(
    weight: Tensor,
    *,
    k: int,
    m: int,
    d_tilde: int | None = None,
    iterations: int = 25,
    anneal: bool = True,
    seed: int = 0,
    points_per_centroid: int | None = POINTS_PER_CENTROID,
) -> VQResult:
    """Quantize one layer's weight with LR²VQ (d̃ < m) or PQ (d̃ = m or None).

    k is clamped to k_eff = min(k, largest power of two ≤ C_out·(D/m)/4), the size convention's
    rule, so the result has exactly the size that `predictors.size` predicts.
    """
    # k-means runs on the CPU (its seeded generator lives there); the caller moves the result.
    weight = weight.detach().float().cpu()
    x = subvectors(weight, m)
    d = m if d_tilde is None else d_tilde
    if not 1 <= d <= m:
        raise ValueError(f"d_tilde={d} must be in 1..m={m}")
    k_eff = effective_k(k, weight.shape[0], x.shape[0] * m // weight.shape[0], m)
    projection = None
    latents = x
    if d < m:
        # Rows of Vᵀ are orthonormal, so Z = X·Pᵀ is the best rank-d̃ coordinates of X.
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        projection = vh[:d].contiguous()
        latents = x @ projection.T
    codebook, codes = kmeans(
        latents,
        k_eff,
        iterations=iterations,
        anneal=anneal,
        seed=seed,
        points_per_centroid=points_per_centroid,
    )
    return VQResult(
        codes=codes, codebook=codebook, projection=projection, shape=tuple(weight.shape)
    )
