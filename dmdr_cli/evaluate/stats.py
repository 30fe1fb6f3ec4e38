"""Mean score with a percentile-bootstrap confidence interval over prompts, for the score tables
(CLIP, Aesthetic, PickScore, HPS). Prompts are the resampling unit: samples of one prompt are averaged
first, since they are not independent draws of the benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int  # prompts
    confidence: float

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """e.g. "31.52 [31.10, 31.95]" (scale=100 for cosine scores printed as 100 x cosine)."""
        m, lo, hi = (scale * v for v in (self.mean, self.low, self.high))
        return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def bootstrap_mean_ci(scores, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                      chunk: int = 256) -> MeanCI:
    """Mean over prompts with a percentile bootstrap CI. `scores` is (n_prompts,) or
    (n_prompts, samples_per_prompt); resampling draws prompts with replacement, `chunk` resamples at a
    time to bound memory."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim == 2:
        values = values.mean(axis=1)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"scores must be a non-empty (n_prompts,) or (n_prompts, samples) array, "
                         f"got shape {values.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = values.size
    rng = np.random.default_rng(seed)
    means = np.concatenate([
        values[rng.integers(0, n, size=(min(chunk, n_resamples - start), n))].mean(axis=1)
        for start in range(0, n_resamples, chunk)
    ])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return MeanCI(float(values.mean()), float(low), float(high), n, confidence)
