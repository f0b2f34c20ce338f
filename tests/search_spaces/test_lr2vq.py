"""LR²VQ and PQ: shapes, k_eff, error ordering, determinism, and k-means itself."""

from __future__ import annotations

import pytest
import torch

from search_spaces.knobs import effective_k
from search_spaces.methods.lr2vq import decode, kmeans, lr2vq, subvectors


def _relative_error(weight, result):
    approx = decode(result.codes, result.codebook, result.projection, result.shape)
    return ((approx - weight).norm() / weight.norm()).item()


def test_subvectors_cut_rows_like_pqf():
    weight = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    x = subvectors(weight, 9)
    assert x.shape == (6, 9)
    assert torch.equal(x[0], weight[0, 0].flatten())  # m = K² is one kernel
    assert torch.equal(x[3], weight[1, 0].flatten())
    with pytest.raises(ValueError, match="does not divide"):
        subvectors(weight, 4)


def test_pq_and_lr2vq_shapes_and_k_eff():
    weight = torch.randn(64, 32, 3, 3)
    pq = lr2vq(weight, k=256, m=9)
    assert pq.projection is None and pq.codebook.shape == (256, 9)
    assert pq.codes.shape == (64 * 32,) and int(pq.codes.max()) < 256
    lr = lr2vq(weight, k=256, m=18, d_tilde=6)
    assert lr.projection.shape == (6, 18) and lr.codebook.shape == (256, 6)
    tiny = lr2vq(torch.randn(10, 16), k=4096, m=4)
    assert tiny.k_eff == effective_k(4096, 10, 16, 4) == 8  # 40 subvectors / 4 → 8


def test_error_falls_with_k_and_rises_as_d_tilde_shrinks():
    torch.manual_seed(0)
    # weights with low-rank structure plus noise, like trained conv kernels
    basis = torch.randn(4, 18)
    weight = (torch.randn(128 * 16, 4) @ basis + 0.1 * torch.randn(128 * 16, 18)).reshape(
        128, 32, 3, 3
    )
    errors_k = [_relative_error(weight, lr2vq(weight, k=k, m=18)) for k in (16, 64, 256)]
    assert errors_k[0] > errors_k[1] > errors_k[2]
    errors_d = [_relative_error(weight, lr2vq(weight, k=256, m=18, d_tilde=d)) for d in (2, 4, 18)]
    assert errors_d[0] > errors_d[1]
    # with rank-4 structure, d̃ = 4 loses little against full PQ
    assert errors_d[1] < errors_d[2] + 0.1


def test_d_tilde_equal_m_is_plain_pq():
    weight = torch.randn(32, 16, 3, 3)
    a = lr2vq(weight, k=64, m=9, d_tilde=9, seed=3)
    b = lr2vq(weight, k=64, m=9, seed=3)
    assert a.projection is None and torch.equal(a.codes, b.codes)


def test_deterministic_for_a_seed():
    weight = torch.randn(32, 16, 3, 3)
    a, b = lr2vq(weight, k=64, m=9, d_tilde=4, seed=1), lr2vq(weight, k=64, m=9, d_tilde=4, seed=1)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codebook, b.codebook)


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = (centers[:, None, :] + 0.1 * torch.randn(4, 50, 2)).reshape(-1, 2)
    found, codes = kmeans(points, 4, anneal=True)
    matched = torch.cdist(centers, found).min(1).values
    assert matched.max() < 0.1
    assert torch.bincount(codes, minlength=4).tolist() == [50, 50, 50, 50]


def test_a_large_layer_is_fitted_on_a_sample_and_every_point_assigned():
    # 256 points per centroid at most fit the codebook (as Faiss); every point still gets the
    # code of its nearest centroid, and the error stays that of fitting on all points.
    points = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0))
    sampled, codes = kmeans(points, 16, iterations=10, points_per_centroid=64)
    full, full_codes = kmeans(points, 16, iterations=10, points_per_centroid=None)
    assert codes.shape == (20_000,)
    nearest = torch.cdist(points, sampled).argmin(1)
    assert torch.equal(codes, nearest)

    def error(centroids, assigned):
        return float((points - centroids[assigned]).square().sum())

    assert error(sampled, codes) < 1.05 * error(full, full_codes)
    assert not torch.equal(sampled, full)  # the sample did change what was fitted


def test_kmeans_runs_on_one_thread_and_gives_the_callers_back():
    # Small operations by the thousand: on shared cores, intra-op threads make them 10-80× slower.
    seen = []
    points = torch.randn(400, 4)
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        from search_spaces.methods import lr2vq as module

        nearest = module._nearest

        def spy(*args):
            seen.append(torch.get_num_threads())
            return nearest(*args)

        module._nearest = spy
        try:
            kmeans(points, 8, iterations=2)
        finally:
            module._nearest = nearest
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


@pytest.mark.parametrize(("dims", "k"), [(2, 1024), (4, 2048), (8, 256)])
def test_each_point_goes_to_its_nearest_centroid(dims, k):
    # m = 2, k = 4096 and the like are plans the search picks; Faiss's search must be exact (of
    # two centroids at distances equal to float rounding, either may be picked).
    from search_spaces.methods.lr2vq import _nearest

    generator = torch.Generator().manual_seed(dims)
    points = torch.randn(5000, dims, generator=generator)
    centroids = torch.randn(k, dims, generator=generator)
    distances = torch.cdist(points.double(), centroids.double()).square()
    codes = _nearest(points, centroids)
    assert codes.dtype == torch.int64 and codes.shape == (5000,)
    chosen = distances.gather(1, codes[:, None])[:, 0]
    assert torch.allclose(chosen, distances.min(1).values, rtol=1e-5, atol=1e-6)
    assert (codes == distances.argmin(1)).float().mean() > 0.999


def _error(points, centroids, codes):
    return float((points - centroids[codes]).square().sum())


def test_scalars_take_the_one_dimensional_path_and_match_the_general_one():
    # Two dimensions with a zero column are the same problem for the general path (unannealed:
    # the two paths draw their noise differently).
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([-3.0, -1.0, 0.5, 2.0, 4.0])
    values = (centers[:, None] + 0.05 * torch.randn(5, 200, generator=generator)).reshape(-1, 1)
    scalar_centroids, scalar_codes = kmeans(values, 5, seed=2, anneal=False)
    padded = torch.cat([values, torch.zeros_like(values)], 1)
    general_centroids, general_codes = kmeans(padded, 5, seed=2, anneal=False)
    order = general_centroids[:, 0].argsort()
    torch.testing.assert_close(scalar_centroids[:, 0], general_centroids[order, 0])
    assert torch.equal(scalar_codes, order.argsort()[general_codes])


def test_scalar_kmeans_ends_at_a_fixed_point_of_lloyd():
    # Every code is the nearest centroid, and every centroid is the mean of its values.
    values = torch.distributions.StudentT(4.0).sample((30_000, 1)) * 0.02
    centroids, codes = kmeans(values, 256, seed=1)
    assert centroids.shape == (256, 1) and codes.shape == (30_000,)
    assert torch.equal(codes, torch.cdist(values.double(), centroids.double()).argmin(1))
    counts = torch.bincount(codes, minlength=256)
    means = torch.zeros(256).index_add_(0, codes, values[:, 0]) / counts.clamp(min=1)
    used = counts > 0
    torch.testing.assert_close(centroids[used, 0], means[used], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scalar_kmeans_error_is_no_worse_than_the_general_path(seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(8_000, 1, generator=generator) ** 3  # heavy-tailed, like weights
    padded = torch.cat([values, torch.zeros_like(values)], 1)
    scalar = _error(values, *kmeans(values, 64, seed=seed))
    general = _error(padded, *kmeans(padded, 64, seed=seed))
    assert scalar <= 1.01 * general


def test_many_centroids_seed_from_a_coreset_that_keeps_the_error(monkeypatch):
    # From k = 1024 up, k-means++ seeds from 16 points per centroid drawn as a lightweight
    # coreset; the error stays that of seeding from every point (heavy tails included).
    from search_spaces.methods import lr2vq as module

    generator = torch.Generator().manual_seed(3)
    points = torch.randn(40_000, 2, generator=generator) ** 3
    coreset = _error(points, *kmeans(points, 1024, seed=0, iterations=10))
    monkeypatch.setattr(module, "_CORESET_MIN_K", 1 << 30)  # seed from every point
    seeded_from_all = _error(points, *kmeans(points, 1024, seed=0, iterations=10))
    assert coreset <= 1.05 * seeded_from_all
