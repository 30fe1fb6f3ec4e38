"""Shapes-world test helpers: a Gaussian blur (plus noise) that imitates a blurry model sample."""

from __future__ import annotations

import numpy as np
import pytest


def _blurred(image: np.ndarray, sigma: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """`image` blurred by a separable Gaussian of `sigma` px, plus Gaussian noise of `noise` grey levels."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    result = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(result, pad, mode="edge")
        length = result.shape[axis]
        result = sum(w * np.take(padded, range(i, i + length), axis=axis) for i, w in enumerate(taps))
    result += np.random.default_rng(seed).normal(0, noise, result.shape)
    return np.clip(np.round(result), 0, 255).astype(np.uint8)


@pytest.fixture
def blurred():
    return _blurred
