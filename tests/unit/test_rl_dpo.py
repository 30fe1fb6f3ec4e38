"""Diffusion-DPO loss (Wallace et al. 2023) against closed forms and on a two-mode toy policy."""

import math

import pytest
import torch

from dmdr_cli.families.schedules import DiscreteSchedule, FlowSchedule
from dmdr_cli.rl.dpo import dpo_loss, per_sample_error, pick_pairs


def test_loss_is_log2_when_policy_equals_reference():
    errs = torch.rand(4, 6)
    loss, stats = dpo_loss(errs[0], errs[0].clone(), errs[1], errs[1].clone(), beta=500.0)
    assert float(loss) == pytest.approx(math.log(2))
    assert float(stats["dpo_margin"]) == 0.0


def test_gradient_lowers_winner_error_and_raises_loser_error():
    """At policy == reference, dL/d err_w = +beta/4/B and dL/d err_l = -beta/4/B (sigmoid(0) = 1/2)."""
    beta, batch = 50.0, 5
    err_w = torch.rand(batch, requires_grad=True)
    err_l = torch.rand(batch, requires_grad=True)
    loss, _ = dpo_loss(err_w, err_w.detach().clone(), err_l, err_l.detach().clone(), beta)
    loss.backward()
    torch.testing.assert_close(err_w.grad, torch.full((batch,), beta / 4 / batch))
    torch.testing.assert_close(err_l.grad, torch.full((batch,), -beta / 4 / batch))


def test_loss_matches_the_formula_off_equilibrium():
    e = torch.tensor([[0.3, 0.1], [0.2, 0.2], [0.1, 0.4], [0.5, 0.3]])  # w_pol, w_ref, l_pol, l_ref
    beta = 10.0
    loss, stats = dpo_loss(e[0], e[1], e[2], e[3], beta)
    logit = -beta / 2 * ((e[0] - e[1]) - (e[2] - e[3]))
    expected = torch.log1p(torch.exp(-logit)).mean()
    torch.testing.assert_close(loss, expected)
    assert float(stats["dpo_accuracy"]) == 0.5


def test_x0_errors_are_eps_errors_over_snr():
    """The docstring's claim on beta's scale: x0 error = eps error * (s/a)^2 for an eps-prediction model."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    schedule = DiscreteSchedule(alphas_cumprod=torch.cumprod(1 - betas, 0))
    x0, noise = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    t = torch.tensor([0.25, 0.5, 0.75])
    x_t = schedule.renoise(x0, t, noise)
    eps_hat = noise + 0.1 * torch.randn(3, 4, 5, 5)
    a, s = schedule.signal_noise(t)
    err_x0 = per_sample_error(schedule.to_x0(eps_hat, x_t, t), x0)
    torch.testing.assert_close(err_x0, per_sample_error(eps_hat, noise) * (s / a) ** 2, rtol=1e-4, atol=1e-6)


def test_pick_pairs_takes_best_and_worst_of_each_group():
    rewards = torch.tensor([0.1, 0.9, 0.5, float("nan"), 2.0, -1.0, 3.0, 3.0])
    winners, losers = pick_pairs(rewards, group_size=4)
    assert winners.tolist() == [1, 6]
    assert losers.tolist() == [3, 5]  # a NaN reward ranks last
    w, l = pick_pairs(torch.tensor([1.0, 1.0]), group_size=2)
    assert w.tolist() == l.tolist()  # a tie: winner == loser, the pair carries no gradient
    with pytest.raises(ValueError):
        pick_pairs(torch.zeros(6), group_size=4)


# Two-mode toy. Policy: x0 ~ pi N(+m, sd^2) + (1 - pi) N(-m, sd^2), pi = sigmoid(logit), the only parameter.
# Its denoiser is the exact posterior mean E[x0 | x_t] under the policy's own distribution, as a perfectly
# trained diffusion model of that policy would be; the reference is the policy at logit 0 (RL start).
MODE, MODE_SD = 1.0, 0.25


def mixture_denoiser(x_t, a, s, logit):
    var_t = a**2 * MODE_SD**2 + s**2
    resp_plus = torch.sigmoid(logit + 2 * a * MODE * x_t / var_t)  # posterior probability of the + mode
    gain = a * MODE_SD**2 / var_t

    def component_mean(mu):
        return mu + gain * (x_t - a * mu)

    return resp_plus * component_mean(MODE) + (1 - resp_plus) * component_mean(-MODE)


def train_mixture_with_dpo(reward_sign: float, beta: float = 5.0, steps: int = 100, prompts: int = 64, group: int = 4):
    """Sample K per prompt from the current policy, pair best and worst by reward, take DPO steps on the
    logit; returns the final probability of the + mode (0.5 at the start)."""
    schedule = FlowSchedule()
    logit = torch.zeros((), requires_grad=True)
    ref_logit = torch.zeros(())
    opt = torch.optim.Adam([logit], lr=0.3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        n = prompts * group
        plus = torch.rand(n, generator=g) < torch.sigmoid(logit.detach())
        x0 = torch.where(plus, MODE, -MODE) + MODE_SD * torch.randn(n, generator=g)
        winners, losers = pick_pairs(reward_sign * x0, group)
        # Same noise and time for both members of a pair (Diffusion-DPO).
        noise, t = torch.randn(prompts, generator=g), 0.2 + 0.6 * torch.rand(prompts, generator=g)
        a, s = schedule.signal_noise(t)

        def errors(x0_pair, logit_):
            x_t = a * x0_pair + s * noise
            return per_sample_error(mixture_denoiser(x_t, a, s, logit_).unsqueeze(1), x0_pair.unsqueeze(1))

        x0_w, x0_l = x0[winners], x0[losers]
        loss, _ = dpo_loss(errors(x0_w, logit), errors(x0_w, ref_logit),
                           errors(x0_l, logit), errors(x0_l, ref_logit), beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(torch.sigmoid(logit.detach()))


def test_dpo_moves_probability_mass_to_the_rewarded_mode():
    assert train_mixture_with_dpo(reward_sign=+1.0) > 0.9
    assert train_mixture_with_dpo(reward_sign=-1.0) < 0.1  # follows the reward, not a bias of the toy


def test_larger_beta_keeps_the_policy_closer_to_the_reference():
    """beta is DPO's KL strength: on the same data a large beta stops near the reference's 50/50."""
    strong = train_mixture_with_dpo(reward_sign=+1.0, beta=500.0)
    assert 0.5 < strong < 0.6 < train_mixture_with_dpo(reward_sign=+1.0, beta=5.0)
