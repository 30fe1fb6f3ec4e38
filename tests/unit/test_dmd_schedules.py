"""DynaRS, DynaDG and CFG jitter against their defining formulas and end points (ALGORITHM.md)."""

import math

import pytest
import torch

from dmdr_cli.dmd.schedules import (cfg_scale_draw, dynadg_real_scale, dynars_beta_params, dynars_c,
                                    sample_beta, sample_renoise_times)
from dmdr_cli.recipe.schema import DmdSection, DynaDGSection, DynaRSSection


def beta_mean_var(a, b):
    return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_dynars_beta_goes_from_4_1p5_to_uniform():
    cfg = DynaRSSection(steps=2000)
    assert dynars_beta_params(0, cfg) == (4.0, 1.5)
    assert dynars_beta_params(2000, cfg) == (1.0, 1.0)
    assert dynars_beta_params(10_000, cfg) == (1.0, 1.0)
    a_mid, b_mid = dynars_beta_params(1000, cfg)
    assert a_mid == pytest.approx(2.5) and b_mid == pytest.approx(1.25)  # c(K_rs / 2) = 1/2
    assert dynars_beta_params(0, DynaRSSection(enabled=False)) == (1.0, 1.0)


def test_dynars_c_is_a_monotone_cosine_ramp():
    cs = [dynars_c(k, 100) for k in range(0, 150)]
    assert cs[0] == 1.0 and cs[100] == pytest.approx(0.0, abs=1e-15) and cs[149] == cs[100]
    assert all(x >= y for x, y in zip(cs, cs[1:]))
    assert dynars_c(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError):
        dynars_c(-1, 100)


def test_dynadg_scale_decays_from_s_r0_to_zero_and_stays_there():
    cfg = DynaDGSection(scale=0.5, steps=2000)
    scales = [dynadg_real_scale(k, cfg) for k in range(0, 2500, 10)]
    assert scales[0] == 0.5
    assert dynadg_real_scale(1000, cfg) == pytest.approx(0.25)
    assert dynadg_real_scale(2000, cfg) == 0.0 and dynadg_real_scale(5000, cfg) == 0.0
    assert dynadg_real_scale(1999, cfg) == pytest.approx(0.0, abs=1e-6)  # continuous at K_dg
    assert all(x >= y for x, y in zip(scales, scales[1:]))
    assert dynadg_real_scale(0, DynaDGSection(enabled=False)) == 0.0


@pytest.mark.parametrize("t_range", [(0.001, 1.0), (0.02, 0.98)])
def test_renoise_times_at_the_start_are_beta_4_1p5_scaled_into_the_range(t_range):
    t_min, t_max = t_range
    t = sample_renoise_times(40_000, 0, DmdSection(t_min=t_min, t_max=t_max), DynaRSSection(), gen(0))
    assert t.dtype == torch.float32 and t.shape == (40_000,)
    assert float(t.min()) >= t_min and float(t.max()) <= t_max
    mean, var = beta_mean_var(4.0, 1.5)  # mean 4 / 5.5 = 0.727
    u = (t - t_min) / (t_max - t_min)
    # A Beta is pinned by its mean and variance, so matching both means it is Beta(4, 1.5).
    assert float(u.mean()) == pytest.approx(mean, abs=0.005)
    assert float(u.var()) == pytest.approx(var, rel=0.05)
    assert float(t.mean()) == pytest.approx(t_min + (t_max - t_min) * 4 / 5.5, abs=0.005)


def test_renoise_times_are_uniform_after_K_rs_and_when_disabled():
    for k, cfg in [(2000, DynaRSSection(steps=2000)), (0, DynaRSSection(enabled=False))]:
        u = sample_renoise_times(40_000, k, DmdSection(t_min=0.0, t_max=1.0), cfg, gen(1))
        assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
        assert float(u.var()) == pytest.approx(1 / 12, rel=0.05)


def test_beta_sampler_matches_moments_for_skewed_parameters():
    u = sample_beta(1.0, 1.5 + 3.0, 40_000, gen(2))
    mean, var = beta_mean_var(1.0, 4.5)
    assert float(u.mean()) == pytest.approx(mean, abs=0.005)
    assert float(u.var()) == pytest.approx(var, rel=0.05)


def test_renoise_times_are_reproducible_under_the_same_seed():
    args = (64, 0, DmdSection(), DynaRSSection())
    torch.manual_seed(123)  # the global RNG must play no part
    a = sample_renoise_times(*args, gen(7))
    torch.manual_seed(456)
    b = sample_renoise_times(*args, gen(7))
    c = sample_renoise_times(*args, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg_scale_draw_is_uniform_on_w0_plus_minus_jitter():
    g = gen(3)
    draws = torch.tensor([cfg_scale_draw(7.0, 0.5, g) for _ in range(4000)])
    assert float(draws.min()) >= 6.5 and float(draws.max()) <= 7.5
    assert float(draws.min()) < 6.52 and float(draws.max()) > 7.48
    assert float(draws.mean()) == pytest.approx(7.0, abs=0.02)
    assert float(draws.var()) == pytest.approx(1.0 / 12, rel=0.1)  # width 1
    assert cfg_scale_draw(4.0, 0.0, g) == 4.0
    assert cfg_scale_draw(7.0, 0.5, gen(9)) == cfg_scale_draw(7.0, 0.5, gen(9))
