"""Fréchet distance between two feature sets, each summarised by a Gaussian (mean, covariance):

    d^2 = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})

The trace of the matrix square root is computed from eigenvalues, in float64. S_a S_b is not symmetric,
so its eigenvalues from a general solver pick up rounding noise (small imaginary parts, small negatives).
With R = S_a^{1/2}, the symmetric positive semi-definite R S_b R equals R (S_b S_a) R^{-1} (where S_a is
invertible; by continuity otherwise), and S_b S_a has the eigenvalues of S_a S_b: `eigvalsh` of R S_b R
gives those eigenvalues as real numbers, negatives from rounding are clipped to 0, and tr((S_a S_b)^{1/2}) is the
sum of their square roots. No iterative sqrtm, no complex parts to discard.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of an (n, d) array, n >= 2 (unbiased covariance, as FID uses)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (n >= 2, d) feature array, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((S_a S_b)^{1/2}) for symmetric PSD S_a, S_b (see the module docstring)."""
    root = _psd_sqrt(np.asarray(cov_a, dtype=np.float64))
    middle = root @ np.asarray(cov_b, dtype=np.float64) @ root
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """Squared Fréchet distance of two Gaussians; 0 for identical statistics (clipped at 0 against rounding)."""
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    cov_a = np.atleast_2d(np.asarray(cov_a, dtype=np.float64))
    cov_b = np.atleast_2d(np.asarray(cov_b, dtype=np.float64))
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"mismatched statistics: means {mu_a.shape} / {mu_b.shape}, "
                         f"covariances {cov_a.shape} / {cov_b.shape}")
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b)
    return max(float(value), 0.0)


def frechet_between(features_a, features_b) -> float:
    """Fréchet distance between the Gaussians fitted to two (n, d) feature arrays."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))
