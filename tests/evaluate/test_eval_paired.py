"""The paired bootstrap against cases with known answers."""

import numpy as np
import pytest

from dmdr_cli.evaluate.frechet import frechet_between
from dmdr_cli.evaluate.paired import bootstrap_interval, paired_mean_difference, resample_indices


def test_a_constant_difference_has_a_zero_width_interval_at_that_value():
    teacher = np.random.default_rng(0).random(200)
    interval = paired_mean_difference(teacher + 0.125, teacher)
    assert interval.estimate == interval.low == interval.high == pytest.approx(0.125)
    assert interval.resamples == 1000 and interval.n == 200


def test_a_mean_of_iid_differences_matches_the_normal_interval():
    rng = np.random.default_rng(1)
    n, sd = 2000, 0.5
    teacher = rng.random(n)
    student = teacher + rng.normal(0.1, sd, n)
    interval = paired_mean_difference(student, teacher, resamples=4000)
    delta = student - teacher
    half = 1.96 * delta.std() / np.sqrt(n)  # the central limit theorem's interval
    assert interval.estimate == pytest.approx(delta.mean())
    assert interval.low == pytest.approx(delta.mean() - half, abs=0.15 * half)
    assert interval.high == pytest.approx(delta.mean() + half, abs=0.15 * half)


def test_pairing_cancels_the_shared_prompt_difficulty():
    rng = np.random.default_rng(2)
    difficulty = rng.random(300)  # varies much more than the models differ
    teacher, student = difficulty, difficulty + rng.normal(0.02, 0.01, 300)
    interval = paired_mean_difference(student, teacher)
    assert interval.low > 0  # unpaired, the spread of `difficulty` would swamp the 0.02


def test_strata_keep_their_sizes_and_the_mean_of_means():
    strata = ["a"] * 10 + ["b"] * 90
    idx = resample_indices(100, np.random.default_rng(0), strata)
    assert (idx < 10).sum() == 10 and (idx >= 10).sum() == 90
    student = np.r_[np.ones(10), np.zeros(90)]
    interval = paired_mean_difference(student, np.zeros(100), strata=strata)
    assert interval.estimate == interval.low == interval.high == pytest.approx(0.5)  # (1 + 0) / 2, not 0.1


def test_seeded_and_generic_statistics():
    rng = np.random.default_rng(3)
    a, real = rng.normal(0.5, 1, (300, 3)), rng.normal(0, 1, (300, 3))
    fd = lambda idx: frechet_between(a[idx], real[idx]) - frechet_between(real[idx], real[idx])  # noqa: E731
    first, again = bootstrap_interval(300, fd, seed=5), bootstrap_interval(300, fd, seed=5)
    assert first == again and first.low < first.estimate < first.high
    assert first.estimate == pytest.approx(frechet_between(a, real))
    with pytest.raises(ValueError):
        paired_mean_difference([1.0, 2.0], [1.0])


def test_seed_and_unit_bootstrap_holds_the_spread_between_seeds():
    """Three seeds that differ by a constant offset each, with no prompt noise: a units-only interval of the seed
    average has zero width; the seed-and-unit interval spans the seeds' spread of the mean (normal approximation
    with the bootstrap's plug-in standard deviation, ddof 0)."""
    from dmdr_cli.evaluate.paired import paired_seed_unit_difference

    rng = np.random.default_rng(0)
    teacher = rng.uniform(size=600)
    offsets = np.array([-0.1, 0.0, 0.1])
    student = teacher[None, :] + offsets[:, None]
    units_only = paired_mean_difference(student.mean(axis=0), teacher)
    both = paired_seed_unit_difference(student, teacher, resamples=4000)
    assert units_only.high - units_only.low < 1e-12 and both.estimate == pytest.approx(0.0, abs=1e-12)
    half = 1.96 * offsets.std(ddof=0) / np.sqrt(3)  # the bootstrap's plug-in standard error of a 3-seed mean
    assert both.high == pytest.approx(half, abs=0.02) and both.low == pytest.approx(-half, abs=0.02)
