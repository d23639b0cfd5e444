"""FID, KID and precision/recall against closed forms, direct computations and constructed point sets."""

import numpy as np
import pytest
import scipy.linalg

from imagen_jax.evaluation import metrics


def _random_covariance(rng, dim, rank=None):
    a = rng.normal(size=(dim, rank or dim))
    return a @ a.T / dim


def _pytorch_fid_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, transcribed (scipy sqrtm with the eps-offset fallback)."""
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_fid_between_diagonal_gaussians_is_the_closed_form():
    # Commuting covariances: tr((S1 S2)^1/2) = sum_i sqrt(a_i b_i), so FID = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([2.0, 1.0, 0.25, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # Rotating both by the same orthogonal matrix changes nothing (the closed form for non-diagonal ones).
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    rotated = metrics.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_fid_matches_pytorch_fid_on_general_and_singular_covariances():
    rng = np.random.default_rng(1)
    for rank in (None, 5):  # full rank, and rank 5 of 12 (what N < D samples give)
        s1, s2 = _random_covariance(rng, 12, rank), _random_covariance(rng, 12, rank)
        mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
        ours = metrics.frechet_distance(mu1, s1, mu2, s2)
        assert np.isfinite(ours) and isinstance(ours, float)
        assert ours == pytest.approx(_pytorch_fid_distance(mu1, s1, mu2, s2), rel=1e-6, abs=1e-5)


def test_fid_of_samples_approaches_the_gaussians_closed_form_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(2)
    s1, s2 = _random_covariance(rng, 3), _random_covariance(rng, 3)
    mu1, mu2 = np.zeros(3), np.array([0.5, -0.5, 1.0])
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    exact = _pytorch_fid_distance(mu1, s1, mu2, s2)
    assert metrics.fid(x, y) == pytest.approx(exact, rel=0.02)
    assert metrics.fid(x[:500], x[:500]) == pytest.approx(0.0, abs=1e-9)


def test_streaming_statistics_equal_one_shot_and_merge_across_shards():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 6)) * 3.0 + 1e4  # a large mean: the naive sum-of-squares formula loses digits
    stats = metrics.FeatureStats.empty(6)
    for start in range(0, 1000, 137):
        stats = stats.update(x[start : start + 137])
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-10)
    # Shards of two "processes", merged in either order.
    a, b = metrics.FeatureStats.of(x[:300]), metrics.FeatureStats.of(x[300:])
    for merged in (a.merge(b), b.merge(a)):
        np.testing.assert_allclose(merged.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-10)
    assert metrics.FeatureStats.empty(6).merge(a) is a
    assert stats.all_processes() is stats  # one process: nothing to gather


def test_mmd2_unbiased_equals_a_direct_double_loop():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.3
    k = lambda u, v: (u @ v / 3 + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_for_the_population_mmd():
    # Two discrete distributions (uniform over 5 and over 4 points): the population MMD^2 is exact, and the
    # mean of many small-subset estimates must hit it (the biased V-statistic would sit ~1/m above it).
    rng = np.random.default_rng(5)
    atoms_a, atoms_b = rng.normal(size=(5, 4)), rng.normal(size=(4, 4)) * 0.8 + 0.2
    kernel = metrics.polynomial_kernel
    population = (
        kernel(atoms_a, atoms_a).mean()
        + kernel(atoms_b, atoms_b).mean()
        - 2 * kernel(atoms_a, atoms_b).mean()
    )
    x = atoms_a[rng.integers(5, size=20_000)]
    y = atoms_b[rng.integers(4, size=20_000)]
    mean, std = metrics.kid(x, y, num_subsets=3000, subset_size=8, seed=0)
    assert abs(mean - population) < 4 * std / np.sqrt(3000)
    same_mean, same_std = metrics.kid(x, x[::-1].copy(), num_subsets=3000, subset_size=8, seed=1)
    assert abs(same_mean) < 4 * same_std / np.sqrt(3000)
    assert population > 20 * std / np.sqrt(3000)  # the test can tell the two apart


def test_precision_recall_on_constructed_point_sets():
    rng = np.random.default_rng(6)
    cluster_a = rng.normal(size=(200, 5)) * 0.1
    cluster_b = rng.normal(size=(200, 5)) * 0.1 + 10.0
    real = np.concatenate([cluster_a, cluster_b])
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(cluster_a, cluster_b) == (0.0, 0.0)
    # A generator that dropped mode b: everything it makes is real-looking, half the real data is missed.
    precision, recall = metrics.precision_recall(real, rng.normal(size=(200, 5)) * 0.1, block=64)
    assert precision > 0.9 and 0.4 < recall <= 0.5  # no fake ball reaches mode b


def test_knn_radius_is_the_kth_neighbour_distance():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # k=2: the 2nd nearest other point of 0 is 3 (d=3); of 1 is 3 (d=2); of 3 is 0 (d=3); of 6 is 1 or 10 (d=4..5)
    np.testing.assert_allclose(metrics.knn_radii(points, k=2, block=2), [9.0, 4.0, 9.0, 16.0, 49.0])
    with pytest.raises(ValueError, match="k-NN"):
        metrics.knn_radii(points, k=5)


def test_all_metrics_reports_every_number():
    rng = np.random.default_rng(7)
    result = metrics.all_metrics(
        rng.normal(size=(64, 4)), rng.normal(size=(48, 4)), kid_subsets=10, kid_subset_size=32
    )
    assert set(result) == {"fid", "kid", "kid_std", "precision", "recall"}
    with pytest.raises(ValueError, match="one dimension"):
        metrics.kid(rng.normal(size=(8, 4)), rng.normal(size=(8, 3)))
