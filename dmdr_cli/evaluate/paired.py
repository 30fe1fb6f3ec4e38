"""Paired bootstrap of a difference between two models scored on the same units (prompts or images).

Both models answer the same prompts from the same noise, so their per-prompt scores are paired: resampling
prompts (with replacement, the same draw for both models) and recomputing student minus teacher gives the
spread of the difference that comes from which prompts the benchmark happened to hold, with the shared
difficulty of each prompt cancelled out. The interval is the percentile bootstrap's (Efron & Tibshirani,
"An Introduction to the Bootstrap", 1993, ch. 13).

`bootstrap_interval` takes the difference as a function of the resampled unit indices, so a statistic that
is not a mean (a Fréchet distance over resampled images, a mean of per-task means) fits the same code;
`strata` resamples within each group at its own size (GenEval's tasks keep their prompt counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float  # the difference on the units as they are
    low: float
    high: float
    n: int  # units
    resamples: int
    confidence: float

    def format(self, digits: int = 3) -> str:
        """e.g. "+0.031 [-0.020, +0.080]"."""
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n,
                "resamples": self.resamples, "confidence": self.confidence}


def resample_indices(n: int, rng: np.random.Generator, strata: Sequence | None = None) -> np.ndarray:
    """One bootstrap draw of unit indices: n with replacement, or within each stratum at its own size."""
    if strata is None:
        return rng.integers(0, n, size=n)
    groups = np.asarray(strata)
    return np.concatenate([rng.choice(members, size=members.size, replace=True)
                           for members in (np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist()))])


def bootstrap_interval(n: int, difference: Callable[[np.ndarray], float], *, strata: Sequence | None = None,
                       resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> Interval:
    """`difference(indices)` on all n units, with a percentile interval over `resamples` seeded draws."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one unit")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if strata is not None and len(strata) != n:
        raise ValueError(f"{len(strata)} strata labels for {n} units")
    rng = np.random.default_rng(seed)
    draws = np.array([difference(resample_indices(n, rng, strata)) for _ in range(resamples)], dtype=np.float64)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(float(difference(np.arange(n))), float(low), float(high), n, resamples, confidence)


def paired_mean_difference(student, teacher, *, strata: Sequence | None = None, **options) -> Interval:
    """mean(student - teacher) over paired per-unit scores; with `strata`, the mean of per-stratum means
    (GenEval's overall: the mean of its task scores)."""
    a, b = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two equal 1-d arrays, got {a.shape} and {b.shape}")
    delta = a - b
    if strata is None:
        return bootstrap_interval(delta.size, lambda idx: float(delta[idx].mean()), **options)
    groups = np.asarray(strata)

    def mean_of_means(idx: np.ndarray) -> float:
        picked = groups[idx]
        return float(np.mean([delta[idx][picked == g].mean() for g in dict.fromkeys(picked.tolist())]))

    return bootstrap_interval(delta.size, mean_of_means, strata=strata, **options)


def paired_seed_unit_difference(student, teacher, *, strata: Sequence | None = None, resamples: int = RESAMPLES,
                                seed: int = 0, confidence: float = CONFIDENCE) -> Interval:
    """Student minus teacher when the student is several training runs (seeds) scored on the same units: a
    two-level bootstrap that resamples seeds and units together (`student`: [seeds, units]; each draw picks
    seeds with replacement and units with replacement, within strata), so the interval holds the spread from
    which seeds were trained as well as from which prompts were asked. With one seed it is the units-only
    interval of the seed-averaged scores."""
    a, b = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 1 or a.shape[1] != b.size:
        raise ValueError(f"need student [seeds, units] and teacher [units], got {a.shape} and {b.shape}")
    groups = np.asarray(strata) if strata is not None else np.zeros(b.size, dtype=int)

    def statistic(rows: np.ndarray, idx: np.ndarray) -> float:
        delta = a[rows][:, idx].mean(axis=0) - b[idx]
        picked = groups[idx]
        return float(np.mean([delta[picked == g].mean() for g in dict.fromkeys(picked.tolist())]))

    rng = np.random.default_rng(seed)
    n_seeds = a.shape[0]
    draws = np.array([statistic(rng.integers(0, n_seeds, size=n_seeds), resample_indices(b.size, rng, strata))
                      for _ in range(resamples)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(statistic(np.arange(n_seeds), np.arange(b.size)), float(low), float(high), b.size, resamples,
                    confidence)


def unit_key(index, prompt: str) -> str:
    """What names one prompt across two models' sample folders: its index in the prompt set and its text,
    so two folders of different prompt sets do not pair by position alone ("00012|a red cube")."""
    if isinstance(index, int):
        return f"{index:05d}|{prompt}"
    return prompt if index == prompt else f"{index}|{prompt}"


def unit_means(labels: dict[str, str], unit_of_image: Sequence[str], values) -> dict[str, list]:
    """{unit: [its label, the mean of its images' values]}, units in order of first appearance."""
    sums: dict[str, list[float]] = {}
    for unit, value in zip(unit_of_image, values, strict=True):
        total = sums.setdefault(unit, [0.0, 0])
        total[0] += float(value)
        total[1] += 1
    return {unit: [labels[unit], total / count] for unit, (total, count) in sums.items()}
