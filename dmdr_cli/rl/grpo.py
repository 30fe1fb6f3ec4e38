"""GRPO on the few-step student's stochastic rollout (Flow-GRPO, arXiv 2505.05470; DanceGRPO).

In `sde` mode (DMD2's backward simulation) each student transition renoises the predicted x0 with
fresh noise, x_{k+1} = a_{k+1} x0_k + s_{k+1} n, a Gaussian with mean a_{k+1} x0_k(theta) and std
s_{k+1} (times an optional noise level). Its log-probability is tractable, so a rollout is a sequence of
Gaussian policy actions and PPO's clipped surrogate applies; the advantage is the group-normalised
reward of the K rollouts of one prompt (GRPO). A 1-step student has no transition and cannot use this.
"""

from __future__ import annotations

import math

import torch

from dmdr_cli.families.schedules import NoiseSchedule

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (group std + eps) within groups of `group_size` consecutive samples.

    `rewards` is [B * K], prompt-major. Population std (as Flow-GRPO), so a group has unit std up to eps;
    a group whose rewards all tie gets zero advantages (no signal, no NaN).
    """
    if rewards.ndim != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [B * K] with K = group_size >= 2, got shape {tuple(rewards.shape)} "
                         f"and group_size {group_size}")
    grouped = rewards.detach().float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, unbiased=False, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def _reduce(per_element: torch.Tensor, reduction: str) -> torch.Tensor:
    dims = tuple(range(1, per_element.ndim))
    if reduction == "sum":
        return per_element.sum(dim=dims)
    if reduction == "mean":
        return per_element.mean(dim=dims)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _as_per_sample(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar, a per-sample [B] or a full-shape value, broadcastable against `like` [B, ...]."""
    v = torch.as_tensor(v, dtype=torch.float32, device=like.device)
    if v.ndim == 1 and like.ndim > 1 and v.shape[0] == like.shape[0]:
        v = v.reshape(-1, *([1] * (like.ndim - 1)))
    return v


def gaussian_logprob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float,
                     reduction: str = "sum") -> torch.Tensor:
    """log N(x_next; mean, std^2 I) per sample [B], fp32; gradients flow through `mean` (and `std`).

    `x_next` is the stored sample, an observation: it is detached. `std` is a scalar, per-sample [B] or
    full-shape. reduction "sum" is the exact log-density; "mean" divides it by the element count, the
    per-element convention of Flow-GRPO's code, which keeps likelihood ratios near 1 on large latents
    (a ratio of exp(sum) over ~10^5 elements is clipped almost always).
    """
    x_next, mean = x_next.detach().float(), mean.float()
    std = _as_per_sample(std, mean)
    per_element = -((x_next - mean) ** 2) / (2 * std ** 2) - torch.log(std) - _LOG_SQRT_2PI
    return _reduce(per_element, reduction)


def sde_transition(schedule: NoiseSchedule, x0: torch.Tensor, t_next: torch.Tensor,
                   noise_level: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the student's stochastic step to `t_next`: mean = a x0 [B, ...], std = s * noise_level [B].

    With noise_level 1 this is exactly `schedule.renoise(x0, t_next, n)`, n ~ N(0, I); the rollout must
    sample with the same std that the log-probability assumes.
    """
    a, s = schedule.signal_noise(t_next)
    mean = _as_per_sample(a, x0) * x0.float()
    return mean, (s * noise_level).float()


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor | float,
                reduction: str = "sum") -> torch.Tensor:
    """KL(N(mean, std^2 I) || N(mean_ref, std^2 I)) = |mean - mean_ref|^2 / (2 std^2) per sample [B]:
    the policy-to-reference KL of one transition (both share the schedule's std), as in Flow-GRPO."""
    mean = mean.float()
    std = _as_per_sample(std, mean)
    per_element = (mean - mean_ref.detach().float()) ** 2 / (2 * std ** 2)
    return _reduce(per_element, reduction)


def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float,
              kl: torch.Tensor | None = None, kl_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) as used by Flow-GRPO / DanceGRPO.

    ratio = exp(logp_new - logp_old); L = mean(max(-A ratio, -A clip(ratio, 1 - clip, 1 + clip)))
    + kl_weight * mean(kl). `logp_*` are [B] or [B, T] (one column per transition); `advantages` [B] is
    broadcast over transitions. At the first epoch on fresh rollouts ratio = 1: L = -mean(A) and its
    gradient is the plain policy gradient, that of -mean(A logp_new); later epochs on the same rollouts
    are kept near the rollout policy by the clip. `logp_old` and `advantages` are constants.

    Returns (loss, stats): grpo_loss, grpo_policy_loss, grpo_ratio_mean, grpo_clip_fraction (share of
    ratios outside the clip range), grpo_approx_kl (0.5 mean (log ratio)^2, to the rollout policy) and
    grpo_kl (mean kl, when given); all detached.
    """
    if logp_new.shape != logp_old.shape:
        raise ValueError(f"shape mismatch: logp_new {tuple(logp_new.shape)}, logp_old {tuple(logp_old.shape)}")
    if advantages.ndim != 1 or advantages.shape[0] != logp_new.shape[0]:
        raise ValueError(f"advantages must be [B] with B = {logp_new.shape[0]}, got {tuple(advantages.shape)}")
    if not 0 < clip <= 1:
        raise ValueError(f"clip must lie in (0, 1], got {clip}")
    if kl_weight and kl is None:
        raise ValueError("kl_weight > 0 needs the per-sample kl to the reference policy")
    log_ratio = logp_new.float() - logp_old.detach().float()
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().float().reshape(-1, *([1] * (logp_new.ndim - 1)))
    policy_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    loss = policy_loss
    stats = {
        "grpo_policy_loss": policy_loss.detach(),
        "grpo_ratio_mean": ratio.detach().mean(),
        "grpo_clip_fraction": ((ratio.detach() - 1).abs() > clip).float().mean(),
        "grpo_approx_kl": 0.5 * log_ratio.detach().pow(2).mean(),
    }
    if kl is not None:
        kl_mean = kl.float().mean()
        loss = loss + kl_weight * kl_mean
        stats["grpo_kl"] = kl_mean.detach()
    stats["grpo_loss"] = loss.detach()
    return loss, stats
