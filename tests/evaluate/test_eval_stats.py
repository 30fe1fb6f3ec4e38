import numpy as np
import pytest

from dmdr_cli.evaluate.stats import bootstrap_mean_ci


def scores(n, seed=1):
    return np.random.default_rng(seed).normal(0.3, 0.05, size=n)


def test_ci_contains_the_mean():
    for n in (5, 50, 500):
        ci = bootstrap_mean_ci(scores(n))
        assert ci.low < ci.mean < ci.high and ci.n == n and ci.confidence == 0.95
        assert ci.mean == pytest.approx(scores(n).mean())


def test_ci_shrinks_with_n():
    small, large = bootstrap_mean_ci(scores(40)), bootstrap_mean_ci(scores(4000))
    # the width of a mean's CI scales as 1/sqrt(n): 100x the prompts, about a tenth of the width
    ratio = (large.high - large.low) / (small.high - small.low)
    assert 0.05 < ratio < 0.2


def test_ci_matches_the_normal_approximation():
    x = scores(2000)
    ci = bootstrap_mean_ci(x, n_resamples=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)


def test_seeded_and_wider_at_higher_confidence():
    x = scores(100)
    assert bootstrap_mean_ci(x, seed=3) == bootstrap_mean_ci(x, seed=3)
    assert bootstrap_mean_ci(x, seed=3) != bootstrap_mean_ci(x, seed=4)
    wide, narrow = bootstrap_mean_ci(x, confidence=0.99), bootstrap_mean_ci(x, confidence=0.8)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_samples_per_prompt_are_averaged_first():
    per_sample = np.array([[0.1, 0.3], [0.5, 0.7], [0.2, 0.2]])
    assert bootstrap_mean_ci(per_sample) == bootstrap_mean_ci(per_sample.mean(axis=1))
    assert bootstrap_mean_ci(per_sample).n == 3


def test_single_prompt_and_bad_input():
    ci = bootstrap_mean_ci([0.25])
    assert ci.low == ci.mean == ci.high == 0.25
    assert ci.format(scale=100) == "25.00 [25.00, 25.00]"
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError):
        bootstrap_mean_ci([0.1], confidence=95)
