"""Sample-quality metrics over feature arrays: FID, KID, and precision/recall (k-NN manifolds).

Every metric takes features [N, D] from one feature network (evaluation/feature_net.py for the built-in data,
evaluation/inception.py for pytorch-fid's InceptionV3); the feature space must be reported with the number.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) from float64 means and
  covariances. `FeatureStats` accumulates them batch by batch (Chan et al.'s pairwise update, so no precision
  is lost to a large mean), merges across batches or processes, and `frechet_distance` takes the trace of the
  matrix square root from the eigenvalues of the symmetric PSD product S1^(1/2) S2 S1^(1/2), which stays
  real and stable where scipy.linalg.sqrtm of the non-symmetric S1 S2 can turn complex or singular.
- KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic kernel k(x, y) = (x.y / D + 1)^3,
  averaged over random subsets (mean and standard deviation), as in torch-fidelity and clean-fid.
- Precision and recall (Kynkaanniemi et al. 2019): each sample's k-NN ball (k=3) in its own set; precision is
  the fraction of generated samples inside some real ball, recall the fraction of real samples inside some
  generated ball. Distances are computed in row blocks, so 50k x 50k never sits in memory at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _as_features(features: np.ndarray, name: str = "features") -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {features.shape}")
    return features


# ------------------------------------------------------------------------------------------------------ FID


@dataclasses.dataclass
class FeatureStats:
    """Running float64 count, mean [D] and centred sum of outer products [D, D] of a feature stream."""

    count: int
    mean: np.ndarray
    scatter: np.ndarray  # sum_i (x_i - mean)(x_i - mean)^T

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        """The statistics of one batch of features [N, D]."""
        x = _as_features(features).astype(np.float64)
        mean = x.mean(axis=0)
        centred = x - mean
        return cls(len(x), mean, centred.T @ centred)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of both streams together (Chan et al.'s pairwise update)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge statistics of dimension {self.mean.shape} and {other.mean.shape}")
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
        return FeatureStats(n, mean, scatter)

    def update(self, features: np.ndarray) -> FeatureStats:
        """These statistics with one more batch of features [N, D] (returns the new statistics)."""
        return self.merge(FeatureStats.of(features))

    @property
    def covariance(self) -> np.ndarray:
        """The unbiased covariance [D, D] (divides by count - 1, as numpy.cov and pytorch-fid)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self.scatter / (self.count - 1)

    def all_processes(self) -> FeatureStats:
        """The statistics merged over every JAX process (each process accumulated its own share)."""
        import jax

        if jax.process_count() == 1:
            return self
        from jax.experimental import multihost_utils

        counts = multihost_utils.process_allgather(np.asarray(self.count, np.int64))
        means = multihost_utils.process_allgather(self.mean)
        scatters = multihost_utils.process_allgather(self.scatter)
        merged = FeatureStats.empty(self.mean.shape[0])
        for c, m, s in zip(counts, means, scatters, strict=True):
            merged = merged.merge(FeatureStats(int(c), np.asarray(m, np.float64), np.asarray(s, np.float64)))
        return merged


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric matrix (negative round-off eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for covariances S1, S2 [D, D], as the sum of sqrt eigenvalues of S1^½ S2 S1^½ (the
    same spectrum as S1 S2, but symmetric PSD: real, and stable when either matrix is singular)."""
    root = _psd_sqrt(np.asarray(sigma1, np.float64))
    product = root @ np.asarray(sigma2, np.float64) @ root
    values = np.linalg.eigvalsh((product + product.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between Gaussians N(mu1, S1) and N(mu2, S2): ||mu1-mu2||^2 + tr(S1+S2-2(S1S2)^½)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"FID needs means [D] and covariances [D, D] of one dimension, got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))  # round-off can leave -1e-12 for identical statistics


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two accumulated feature streams."""
    return frechet_distance(a.mean, a.covariance, b.mean, b.covariance)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature arrays [N, D] and [M, D]."""
    return fid_from_stats(FeatureStats.of(features_a), FeatureStats.of(features_b))


# ------------------------------------------------------------------------------------------------------ KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / D + 1)^3 for x [N, D], y [M, D] -> [N, M], in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of MMD^2 between the distributions of x [N, D] and y [M, D] (N, M >= 2), with the
    cubic polynomial kernel: the diagonals k(x_i, x_i), k(y_j, y_j) are left out."""
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD^2 needs at least 2 samples per set, got {n} and {m}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kid(
    features_a: np.ndarray,
    features_b: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, standard deviation) of the unbiased MMD^2 over `num_subsets` random subset pairs of
    min(subset_size, N, M) samples each, drawn without replacement (deterministic per seed)."""
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs features of one dimension, got {a.shape[1]} and {b.shape[1]}")
    size = min(int(subset_size), len(a), len(b))
    if size < 2 or num_subsets < 1:
        raise ValueError(f"KID needs subsets of >= 2 samples and >= 1 subset; got {size} and {num_subsets}")
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(int(num_subsets))
    ]
    return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------------------- precision/recall


def _pairwise_sq_distances(x: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [N, M] between rows of x and y (y_sq: |y|^2 [M]), clipped at 0."""
    x_sq = np.einsum("nd,nd->n", x, x)
    return np.maximum(x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T), 0.0)


def knn_radii(features: np.ndarray, k: int = 3, block: int = 256) -> np.ndarray:
    """Squared distance from each sample [N, D] to its k-th nearest other sample in the same set -> [N]."""
    x = _as_features(features).astype(np.float64)
    if not 1 <= k < len(x):
        raise ValueError(f"k-NN radii need 1 <= k < N, got k={k} and N={len(x)}")
    x_sq = np.einsum("nd,nd->n", x, x)
    radii = np.empty(len(x))
    for start in range(0, len(x), block):
        distances = _pairwise_sq_distances(x[start : start + block], x, x_sq)
        # index 0 of the sorted row is the sample itself (distance 0), so the k-th neighbour is index k
        radii[start : start + block] = np.partition(distances, k, axis=1)[:, k]
    return radii


def coverage_fraction(
    manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, block: int = 256
) -> float:
    """The fraction of queries [Q, D] inside at least one ball (centre manifold[i], squared radius radii[i])."""
    centres, q = np.asarray(manifold, np.float64), np.asarray(queries, np.float64)
    c_sq = np.einsum("nd,nd->n", centres, centres)
    inside = 0
    for start in range(0, len(q), block):
        distances = _pairwise_sq_distances(q[start : start + block], centres, c_sq)
        inside += int(np.any(distances <= radii[None, :], axis=1).sum())
    return inside / len(q)


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = 3, block: int = 256
) -> tuple[float, float]:
    """(precision, recall) of generated features [M, D] against real features [N, D] with k-NN manifolds."""
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"precision/recall need features of one dimension, got {real.shape[1]} and {fake.shape[1]}"
        )
    precision = coverage_fraction(real, knn_radii(real, k, block), fake, block)
    recall = coverage_fraction(fake, knn_radii(fake, k, block), real, block)
    return precision, recall


def all_metrics(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """{fid, kid, kid_std, precision, recall} of generated features against real features."""
    kid_mean, kid_std = kid(real_features, fake_features, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(real_features, fake_features, k)
    return {
        "fid": fid(real_features, fake_features),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }
