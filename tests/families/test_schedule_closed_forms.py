"""schedules.py against the formulas of ALGORITHM.md "Notation", written out by hand."""

import math

import pytest
import torch

from dmdr_cli.families.schedules import (DiscreteSchedule, FlowSchedule, shifted_flow_times,
                                         uniform_discrete_timesteps)


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's scaled_linear betas (0.00085 .. 0.012, 1000 steps), computed in plain Python."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    betas = [(lo + (hi - lo) * i / 999) ** 2 for i in range(1000)]
    out, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        out.append(prod)
    return torch.tensor(out, dtype=torch.float64)


AC = sd_alphas_cumprod()
T = torch.tensor([0.999, 0.749, 0.399])  # -> timesteps 999, 749, 399
STEPS = [999, 749, 399]


def hand_a_s(steps):
    a = torch.tensor([math.sqrt(AC[i]) for i in steps]).view(-1, 1, 1, 1).float()
    s = torch.tensor([math.sqrt(1 - AC[i]) for i in steps]).view(-1, 1, 1, 1).float()
    return a, s


@pytest.fixture
def x0_and_noise():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)


def test_model_timestep_rounds_and_clamps():
    sched = DiscreteSchedule(AC)
    got = sched.model_timestep(torch.tensor([0.999, 0.399, 0.749, 0.249, 1.0, 0.0, 0.0004]))
    assert got.tolist() == [999, 399, 749, 249, 999, 0, 0]
    assert FlowSchedule().model_timestep(torch.tensor([1.0, 0.75, 0.001])).tolist() == pytest.approx([1000, 750, 1])


def test_known_alphas_of_the_sd_schedule():
    # ALGORITHM.md: a_999 ~ 0.0047 (pure noise input), a_399 ~ 0.426 (SDXL 1-step student)
    a, _ = DiscreteSchedule(AC).signal_noise(torch.tensor([0.999, 0.399]))
    assert (a**2).tolist() == pytest.approx([0.0047, 0.426], abs=5e-4)


def test_eps_renoise_to_x0_and_target(x0_and_noise):
    x0, n = x0_and_noise
    sched = DiscreteSchedule(AC, "epsilon")
    a, s = hand_a_s(STEPS)
    x_t = a * x0 + s * n
    torch.testing.assert_close(sched.renoise(x0, T, n), x_t)
    torch.testing.assert_close(sched.to_x0(n, x_t, T), (x_t - s * n) / a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sched.to_x0(n, x_t, T), x0, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(sched.target(x0, n, T), n)


def test_v_prediction_round_trip(x0_and_noise):
    x0, n = x0_and_noise
    sched = DiscreteSchedule(AC, "v_prediction")
    a, s = hand_a_s(STEPS)
    x_t = a * x0 + s * n
    v = a * n - s * x0  # Salimans & Ho 2022
    torch.testing.assert_close(sched.target(x0, n, T), v)
    torch.testing.assert_close(sched.to_x0(v, x_t, T), a * x_t - s * v)
    torch.testing.assert_close(sched.to_x0(v, x_t, T), x0, rtol=1e-4, atol=1e-5)


def test_flow_round_trip(x0_and_noise):
    x0, n = x0_and_noise
    sched = FlowSchedule()
    t = torch.tensor([1.0, 0.75, 0.3])
    tb = t.view(-1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * n
    torch.testing.assert_close(sched.renoise(x0, t, n), x_t)
    v = n - x0
    torch.testing.assert_close(sched.target(x0, n, t), v)
    torch.testing.assert_close(sched.to_x0(v, x_t, t), x_t - tb * v)
    torch.testing.assert_close(sched.to_x0(v, x_t, t), x0, rtol=1e-5, atol=1e-5)


def test_flow_deterministic_step_is_euler(x0_and_noise):
    x, v = x0_and_noise
    sched = FlowSchedule()
    t, t_next = torch.full((3,), 0.75), torch.full((3,), 0.5)
    x0 = sched.to_x0(v, x, t)
    torch.testing.assert_close(sched.ddim_step(x, x0, t, t_next), x + (0.5 - 0.75) * v, rtol=1e-5, atol=1e-5)


def test_eps_deterministic_step_is_ddim(x0_and_noise):
    x, eps = x0_and_noise
    sched = DiscreteSchedule(AC)
    t, t_next = torch.full((3,), 0.749), torch.full((3,), 0.499)
    a, s = math.sqrt(AC[749]), math.sqrt(1 - AC[749])
    a2, s2 = math.sqrt(AC[499]), math.sqrt(1 - AC[499])
    x0 = (x - s * eps) / a
    expected = a2 * x0 + s2 * eps  # Song et al. 2021, eta = 0
    torch.testing.assert_close(sched.ddim_step(x, sched.to_x0(eps, x, t), t, t_next), expected,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shift, expected", [(3.0, [1.0, 0.900, 0.750, 0.501]), (5.0, [1.0, 0.938, 0.834, 0.626])])
def test_shifted_flow_times(shift, expected):
    assert shifted_flow_times(4, shift) == pytest.approx(expected, abs=5e-4)


def test_uniform_discrete_timesteps():
    assert uniform_discrete_timesteps(4) == [999, 749, 499, 249]
    assert uniform_discrete_timesteps(1) == [999]
    assert uniform_discrete_timesteps(2) == [999, 499]
