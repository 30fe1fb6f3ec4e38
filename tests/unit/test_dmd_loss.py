"""DMD loss against the closed form for Gaussians.

Teacher p_real = N(mu_r, sigma_r^2 I); generator x0 = mu_g + sigma_g z, so p_fake = N(mu_g, sigma_g^2 I).
Renoised with x_t = a x0 + s n, both stay Gaussian: N(a mu, (a^2 sigma^2 + s^2) I), and the exact x0
estimate of each is Tweedie's posterior mean, E[x0 | x_t] = mu + a sigma^2 / (a^2 sigma^2 + s^2) (x_t - a mu).
Scores are therefore exact: the only approximation left is the Monte Carlo average.

Which weighting? Tweedie gives x0_hat = (x_t + s^2 score(x_t)) / a, so
    x0_fake - x0_real = (s^2 / a) (score_fake - score_real),
and with dx_t/dtheta = a dx0_g/dtheta the DMD gradient per sample is
    (x0_fake - x0_real) . dx0_g/dtheta = (s/a)^2 (score_fake - score_real) . dx_t/dtheta,
whose expectation is (s/a)^2 grad_theta KL(p_fake,t || p_real,t) (the reparameterised KL gradient; the
term from p_fake's own dependence on theta at fixed x has zero mean). The unnormalised loss averages
over the batch and the d elements, so
    grad_theta L_dmd = (1 / d) E_t[(s_t / a_t)^2 grad_theta KL_t]   (weight 1/SNR(t)).
A fixed set of times with very different SNRs makes the weighting itself testable, not just the sign.
"""

import math

import pytest
import torch

from dmdr_cli.dmd.loss import dmd_loss, fake_score_loss
from dmdr_cli.dmd.schedules import sample_renoise_times
from dmdr_cli.families.schedules import DiscreteSchedule, FlowSchedule
from dmdr_cli.recipe.schema import DmdSection, DynaRSSection

SHAPE = (2, 2, 2)  # one "latent" of C x H x W = 8 elements
D = math.prod(SHAPE)
MU_REAL = torch.tensor([1.5, -1.0, 0.5, 2.0, -0.5, 0.0, 1.0, -2.0]).view(SHAPE)
SIGMA_REAL = 1.25  # exact in fp32, so fake == real below holds bit for bit


def made_up_vp_schedule() -> DiscreteSchedule:
    betas = torch.linspace(2e-4, 0.03, 1000, dtype=torch.float64)
    return DiscreteSchedule(alphas_cumprod=torch.cumprod(1 - betas, 0))


SCHEDULES = {"flow": FlowSchedule(), "vp": made_up_vp_schedule()}


def tweedie_x0(x_t, a, s, mu, sigma):
    """E[x0 | x_t] for x0 ~ N(mu, sigma^2 I), x_t = a x0 + s n; a, s per sample [B]."""
    a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
    return mu + a * sigma**2 / (a**2 * sigma**2 + s**2) * (x_t - a * mu)


def noisy_kl(a, s, mu_g, sigma_g, mu_r, sigma_r):
    """KL(N(a mu_g, v_g I) || N(a mu_r, v_r I)) in D dims, v = a^2 sigma^2 + s^2 (scalar a, s)."""
    v_g, v_r = a**2 * sigma_g**2 + s**2, a**2 * sigma_r**2 + s**2
    return 0.5 * (D * v_g / v_r + a**2 * ((mu_g - mu_r) ** 2).sum() / v_r - D + D * torch.log(v_r / v_g))


def dmd_step_loss(schedule, mu_g, sigma_g, t, generator, normalize):
    """One DMD loss on a batch at times t, with exact real and (current-generator) fake x0 estimates."""
    z = torch.randn(len(t), *SHAPE, generator=generator)
    n = torch.randn(len(t), *SHAPE, generator=generator)
    x0_g = mu_g + sigma_g * z
    x_t = schedule.renoise(x0_g.detach(), t, n)
    a, s = schedule.signal_noise(t)
    x0_real = tweedie_x0(x_t, a, s, MU_REAL, SIGMA_REAL)
    x0_fake = tweedie_x0(x_t, a, s, mu_g.detach(), sigma_g.detach())
    return dmd_loss(x0_g, x0_real, x0_fake, normalize=normalize)


def cosine(u, v):
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


@pytest.mark.parametrize("family", sorted(SCHEDULES))
def test_unnormalised_dmd_gradient_is_the_1_over_snr_weighted_kl_gradient(family):
    schedule = SCHEDULES[family]
    times = torch.tensor([0.25, 0.5, 0.75])
    per_time = 60_000
    mu_g = torch.full(SHAPE, 0.3).requires_grad_()
    sigma_g = torch.tensor(0.6, requires_grad=True)
    g = torch.Generator().manual_seed(0)

    loss, _ = dmd_step_loss(schedule, mu_g, sigma_g, times.repeat_interleave(per_time), g, normalize=False)
    loss.backward()
    dmd_grad = torch.cat([mu_g.grad.flatten(), sigma_g.grad.view(1)])

    a, s = schedule.signal_noise(times)

    def kl_gradient(weights):
        mu_k = mu_g.detach().clone().requires_grad_()
        sigma_k = sigma_g.detach().clone().requires_grad_()
        kls = torch.stack([noisy_kl(a[i], s[i], mu_k, sigma_k, MU_REAL, SIGMA_REAL) for i in range(len(times))])
        ((weights * kls).mean() / D).backward()
        return torch.cat([mu_k.grad.flatten(), sigma_k.grad.view(1)])

    kl_grad = kl_gradient(weights=(s / a) ** 2)
    cos = cosine(dmd_grad, kl_grad)
    rel_err = float((dmd_grad - kl_grad).norm() / kl_grad.norm())
    print(f"{family}: cosine {cos:.6f}, relative error {rel_err:.4f}")
    assert cos > 0.99
    assert rel_err < 0.05  # the magnitude too: the weighting is (s/a)^2

    # Teeth for the weighting: the same KL gradients without 1/SNR(t) are far off.
    unweighted = kl_gradient(weights=torch.ones_like(a))
    assert float((dmd_grad - unweighted).norm() / unweighted.norm()) > 0.2


def train_generator(schedule, sign: float, steps: int = 60, batch: int = 256, lr: float = 2.0):
    """SGD on the normalised DMD loss, renoise times from DynaRS, fake score = the current generator's exact
    x0 estimate (an ideally trained fake score). Returns (mean error, std error) before and after."""
    mu_g = torch.zeros(SHAPE, requires_grad=True)
    sigma_g = torch.tensor(0.5, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    dmd_cfg, dynars_cfg = DmdSection(), DynaRSSection(steps=steps)

    def distance():
        return float((mu_g.detach() - MU_REAL).norm() / math.sqrt(D)), abs(float(sigma_g.detach()) - SIGMA_REAL)

    start = distance()
    for k in range(steps):
        t = sample_renoise_times(batch, k, dmd_cfg, dynars_cfg, g)
        loss, _ = dmd_step_loss(schedule, mu_g, sigma_g, t, g, normalize=True)
        loss.backward()
        with torch.no_grad():
            for p in (mu_g, sigma_g):
                p -= sign * lr * p.grad
                p.grad = None
        if not all(math.isfinite(v) for v in distance()):
            break
    return start, distance()


@pytest.mark.parametrize("family", sorted(SCHEDULES))
def test_dmd_updates_move_the_generator_to_the_teacher(family):
    (mu0, sd0), (mu_err, sd_err) = train_generator(SCHEDULES[family], sign=1.0)
    assert mu0 > 1.0 and sd0 > 0.7
    assert mu_err < 0.05 and sd_err < 0.05, (mu_err, sd_err)


def test_sign_flipped_dmd_updates_diverge():
    """The same loop ascending the loss moves away: the convergence test above has teeth."""
    (mu0, sd0), (mu_err, sd_err) = train_generator(SCHEDULES["flow"], sign=-1.0)
    assert not (mu_err < 0.05 and sd_err < 0.05)
    assert mu_err > 2 * mu0


@pytest.mark.parametrize("normalize", [True, False])
def test_no_update_when_the_generator_already_matches_the_teacher(normalize):
    """Fake == real (generator distribution == teacher's): the DMD gradient vanishes exactly."""
    mu_g = MU_REAL.clone().requires_grad_()
    sigma_g = torch.tensor(SIGMA_REAL, requires_grad=True)
    g = torch.Generator().manual_seed(2)
    loss, stats = dmd_step_loss(SCHEDULES["vp"], mu_g, sigma_g, torch.rand(256, generator=g), g, normalize)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.all(mu_g.grad == 0) and float(sigma_g.grad) == 0.0
    assert float(stats["dmd_grad_norm"]) == 0.0


def test_gradient_is_normalised_per_sample_by_mean_abs_p_real():
    x0_g = torch.zeros(2, 4, requires_grad=True)
    x0_real = torch.tensor([[-2.0, -2.0, 2.0, 2.0], [-0.5, 0.5, -0.5, 0.5]])  # mean |p_real|: 2 and 0.5
    x0_fake = torch.zeros(2, 4)
    loss, stats = dmd_loss(x0_g, x0_real, x0_fake)
    loss.backward()
    grad = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])  # (p_real - p_fake) / normaliser
    torch.testing.assert_close(x0_g.grad, grad / 8)  # d/dx0_g of 0.5 mean((x0_g - (x0_g - grad))^2)
    torch.testing.assert_close(float(loss.detach()), 0.5 * 1.0)
    torch.testing.assert_close(float(stats["dmd_normalizer"]), 1.25)
    torch.testing.assert_close(float(stats["dmd_grad_norm"]), 2.0)


def test_loss_is_fp32_and_survives_nonfinite_score_estimates():
    x0_g = torch.randn(3, 2, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    x0_real = torch.randn(3, 2, 4, 4, dtype=torch.bfloat16)
    x0_fake = x0_real.clone()
    x0_real[0, 0, 0, 0] = float("nan")
    x0_fake[1, 1, 2, 2] = float("inf")
    x0_real[2] = x0_g.detach()[2]  # p_real = 0: the normaliser's floor keeps it finite
    loss, stats = dmd_loss(x0_g, x0_real, x0_fake)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(float(loss.detach()))
    assert torch.isfinite(x0_g.grad.float()).all()
    assert float(stats["dmd_nonfinite"]) > 0


def test_fake_score_loss_is_mse_in_the_family_parameterisation_and_never_reaches_the_generator():
    schedule = FlowSchedule()
    x0 = torch.randn(4, 2, 3, 3, requires_grad=True)  # stands for the generator's output
    noise, t = torch.randn(4, 2, 3, 3), torch.rand(4)
    target = schedule.target(x0, noise, t)
    perfect = (noise - x0).detach()
    assert float(fake_score_loss(perfect, target)) == 0.0
    pred = torch.zeros(4, 2, 3, 3, requires_grad=True)
    loss = fake_score_loss(pred, target)
    torch.testing.assert_close(loss, ((noise - x0) ** 2).mean())
    loss.backward()
    assert x0.grad is None and pred.grad is not None


def test_an_entry_nonfinite_in_one_score_estimate_gets_no_gradient():
    """One mask from both estimates: an entry broken in p_fake only must not keep p_real's one-sided pull."""
    x0_g = torch.zeros(1, 4, requires_grad=True)
    x0_real = torch.ones(1, 4)
    x0_fake = torch.tensor([[0.0, 0.0, 0.0, float("nan")]])
    loss, stats = dmd_loss(x0_g, x0_real, x0_fake, normalize=False)
    loss.backward()
    torch.testing.assert_close(x0_g.grad, torch.tensor([[-1.0, -1.0, -1.0, 0.0]]) / 4)
    torch.testing.assert_close(float(stats["dmd_nonfinite"]), 0.25)
