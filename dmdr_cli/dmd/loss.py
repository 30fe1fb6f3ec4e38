"""The distribution matching loss and the fake-score loss, in x0-space for every family.

DMD (Yin et al. 2024, arXiv 2311.18828; DMD2, arXiv 2405.14867; DMDR, arXiv 2511.13649): the
generator follows the difference of the real and fake scores at its renoised samples. Via Tweedie,
E[x0 | x_t] = (x_t + s_t^2 grad log p_t(x_t)) / a_t, so a difference of x0 estimates is a difference
of scores scaled by s_t^2 / a_t: the loss needs nothing but `predict_x0` from the family adapter.
Gradient of the unnormalised loss: E[(x0_fake - x0_real) . dx0_g/dtheta]
= (s_t / a_t)^2 grad_theta KL(p_fake,t || p_real,t) / numel, i.e. a 1/SNR(t)-weighted KL
(tests/unit/test_dmd_loss.py checks this against the closed form for Gaussians).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the batch dim, kept broadcastable: [B, 1, ...]."""
    return x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)


def dmd_loss(x0_g: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, *,
             normalize: bool = True, min_normalizer: float = 1e-6) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DMD2's generator loss. Only `x0_g` (the generator's output, with grad) receives a gradient.

    p_real = x0_g - x0_real, p_fake = x0_g - x0_fake,
    grad = (p_real - p_fake) / mean_{C,H,W} |p_real|   (per sample; `normalize=False` drops the divisor),
    L = 0.5 * mean((x0_g - stopgrad(x0_g - grad))^2), so dL/dx0_g = grad / x0_g.numel().

    The per-sample normaliser makes the step size independent of how far the sample is from the
    teacher's estimate (DMD's weighting w_t, Yin et al. 2024). Everything runs in fp32 whatever the
    inputs' dtype. An entry non-finite in either score estimate (a diverged fake score, an fp16
    overflow) contributes no gradient and is counted in the stats; a non-finite `x0_g` is left to surface as a
    non-finite loss.

    Returns (loss, stats); the stats are detached 0-dim tensors (no host sync here): dmd_loss,
    dmd_grad_norm (mean per-sample L2 norm of grad), dmd_normalizer (mean divisor), dmd_nonfinite
    (fraction of entries non-finite in either estimate).
    """
    if not (x0_g.shape == x0_real.shape == x0_fake.shape):
        raise ValueError(f"shape mismatch: x0_g {tuple(x0_g.shape)}, x0_real {tuple(x0_real.shape)}, "
                         f"x0_fake {tuple(x0_fake.shape)}")
    if x0_g.ndim < 2:
        raise ValueError(f"expected a batch [B, ...] with at least 2 dims, got shape {tuple(x0_g.shape)}")
    x0_g = x0_g.float()
    with torch.no_grad():
        p_real = x0_g - x0_real.float()
        p_fake = x0_g - x0_fake.float()
        # one mask from both: an entry broken in only one estimate would otherwise get a one-sided gradient
        finite = torch.isfinite(p_real) & torch.isfinite(p_fake)
        nonfinite = (~finite).float().mean()
        p_real = torch.where(finite, p_real, 0.0)
        p_fake = torch.where(finite, p_fake, 0.0)
        if normalize:
            normalizer = _per_sample_mean(p_real.abs()).clamp_min(min_normalizer)
        else:
            normalizer = torch.ones_like(_per_sample_mean(p_real))
        grad = torch.nan_to_num((p_real - p_fake) / normalizer, nan=0.0, posinf=0.0, neginf=0.0)
        target = x0_g - grad
    loss = 0.5 * F.mse_loss(x0_g, target)
    stats = {
        "dmd_loss": loss.detach(),
        "dmd_grad_norm": grad.flatten(1).norm(dim=1).mean(),
        "dmd_normalizer": normalizer.mean(),
        "dmd_nonfinite": nonfinite,
    }
    return loss, stats


def fake_score_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Denoising loss of the fake score in the family's own parameterisation (eps, v or flow velocity).

    The caller passes `target = family.schedule.target(stopgrad(x0_g), noise, t)`; it is a constant
    here, so the fake-score update can never leak a gradient into the generator. fp32 MSE.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)}, target {tuple(target.shape)}")
    return F.mse_loss(pred.float(), target.detach().float())
