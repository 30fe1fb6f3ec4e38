"""GRPO pieces (Flow-GRPO construction) against independent formulas and a 1-D Gaussian policy."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dmdr_cli.families.schedules import DiscreteSchedule, FlowSchedule
from dmdr_cli.rl.grpo import gaussian_kl, gaussian_logprob, grpo_loss, group_advantages, sde_transition


def test_advantages_have_zero_mean_and_unit_std_within_each_group():
    g = torch.Generator().manual_seed(0)
    rewards = torch.cat([torch.randn(6, generator=g) * 5 + 3, torch.randn(6, generator=g) * 0.01 - 2,
                         torch.full((6,), 0.7)])
    adv = group_advantages(rewards, group_size=6).view(3, 6)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(adv[:2].std(dim=1, unbiased=False), torch.ones(2), atol=2e-2, rtol=0)  # eps = 1e-4
    assert torch.equal(adv[2], torch.zeros(6))  # all tied: no signal, no NaN
    # Ranking inside a group is kept, and groups do not mix.
    assert torch.equal(adv[0].argsort(), rewards[:6].argsort())


def test_logprob_matches_torch_normal():
    x, mean = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    std = torch.tensor([0.5, 1.0, 2.0])
    expected = Normal(mean, std.view(3, 1, 1, 1)).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_logprob(x, mean, std), expected)
    torch.testing.assert_close(gaussian_logprob(x, mean, 0.3), Normal(mean, 0.3).log_prob(x).sum(dim=(1, 2, 3)))
    torch.testing.assert_close(gaussian_logprob(x, mean, std, reduction="mean"), expected / 32)


@pytest.mark.parametrize("schedule", [FlowSchedule(),
                                      DiscreteSchedule(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0))])
def test_sde_transition_is_the_renoise_step_and_its_density_is_the_hand_formula(schedule):
    x0, n = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t_next = torch.tensor([0.75, 0.5])
    x_next = schedule.renoise(x0, t_next, n)
    mean, std = sde_transition(schedule, x0, t_next)
    torch.testing.assert_close(mean + std.view(-1, 1, 1, 1) * n, x_next)
    d = 4 * 3 * 3
    by_hand = -0.5 * n.pow(2).flatten(1).sum(1) - d * torch.log(std) - d * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_logprob(x_next, mean, std), by_hand, rtol=1e-5, atol=1e-4)
    _, std_half = sde_transition(schedule, x0, t_next, noise_level=0.5)
    torch.testing.assert_close(std_half, std / 2)


def test_gaussian_kl_matches_torch():
    m, m_ref, std = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0.5, 1.0, 1.5])
    expected = kl_divergence(Normal(m, std[:, None]), Normal(m_ref, std[:, None])).sum(1)
    torch.testing.assert_close(gaussian_kl(m, m_ref, std), expected)


def test_first_epoch_is_the_plain_policy_gradient():
    logp = torch.randn(8, requires_grad=True)
    adv = torch.randn(8)
    loss, stats = grpo_loss(logp, logp.detach(), adv, clip=0.2)
    loss.backward()
    assert float(stats["grpo_ratio_mean"]) == 1.0 and float(stats["grpo_clip_fraction"]) == 0.0
    torch.testing.assert_close(loss.detach(), -adv.mean())
    plain = logp.detach().clone().requires_grad_()
    (-(adv * plain).mean()).backward()
    torch.testing.assert_close(logp.grad, plain.grad)


def test_clip_stops_the_gradient_beyond_the_trust_region():
    logp_old = torch.zeros(4)
    logp_new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()  # ratios outside [0.8, 1.2]
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = grpo_loss(logp_new, logp_old, adv, clip=0.2)
    loss.backward()
    # Clipped where the step already went the advantage's way; kept (pessimistic) where it went against it.
    assert logp_new.grad[0] == 0 and logp_new.grad[3] == 0
    torch.testing.assert_close(logp_new.grad[1], torch.tensor(1.5 / 4))
    torch.testing.assert_close(logp_new.grad[2], torch.tensor(-0.5 / 4))
    assert float(stats["grpo_clip_fraction"]) == 1.0


def test_per_transition_logprobs_and_kl_term():
    logp = torch.randn(4, 3, requires_grad=True)  # 3 transitions per trajectory
    adv, kl = torch.randn(4), torch.rand(4, 3)
    loss, stats = grpo_loss(logp, logp.detach(), adv, clip=0.2, kl=kl, kl_weight=0.1)
    torch.testing.assert_close(loss.detach(), -adv.mean() + 0.1 * kl.mean())
    assert float(stats["grpo_kl"]) == pytest.approx(float(kl.mean()))
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), adv, clip=0.2, kl_weight=0.1)


def test_gaussian_policy_moves_toward_the_reward_peak():
    """Policy N(theta, 1) in 1-D, reward -(x - 3)^2, groups of 8, two PPO epochs per batch of rollouts."""
    theta = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    g = torch.Generator().manual_seed(0)
    groups, group_size, std = 16, 8, 1.0
    for _ in range(60):
        with torch.no_grad():
            mean_old = theta.expand(groups * group_size, 1).clone()
            x = mean_old + std * torch.randn(groups * group_size, 1, generator=g)
            logp_old = gaussian_logprob(x, mean_old, std)
            adv = group_advantages(-(x.squeeze(1) - 3.0) ** 2, group_size)
        for _ in range(2):
            logp_new = gaussian_logprob(x, theta.expand(groups * group_size, 1), std)
            loss, _ = grpo_loss(logp_new, logp_old, adv, clip=0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert abs(float(theta.detach()) - 3.0) < 0.3, float(theta.detach())
