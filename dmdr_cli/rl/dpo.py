"""Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) as a pure loss on denoising errors.

DMDR (arXiv 2511.13649) ablates DPO as an RL branch but publishes no code; the construction here
(ALGORITHM.md "RL branch"): K samples per prompt from the generator, best and worst by reward form the
pair, both noised with the same noise and student timestep, the generator used as a denoiser on them,
the reference being the generator at RL start (or the teacher).

Errors are measured in x0 space: err = mean over elements of (x0_hat - x0)^2. For every
parameterisation, x0 error = eps error / SNR(t) with SNR = a_t^2 / s_t^2 (eps prediction:
x0 - x0_hat = (s/a)(eps_hat - eps); flow and v differ only by the same per-t factor). So a beta tuned
for eps-space errors (the Diffusion-DPO code uses thousands) corresponds to beta_x0 ~ beta_eps * SNR(t):
x0 errors are inflated at high noise and shrunk at low noise. x0 space is the generator's native output,
and it stays defined at the first student step, where the input is pure noise (SNR = 0) and eps error
says nothing about the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_error(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Denoising error per sample, mean over all non-batch elements (the Diffusion-DPO code's reduction). fp32 [B]."""
    if x0_pred.shape != x0.shape:
        raise ValueError(f"shape mismatch: prediction {tuple(x0_pred.shape)}, target {tuple(x0.shape)}")
    return (x0_pred.float() - x0.detach().float()).pow(2).flatten(1).mean(dim=1)


def dpo_loss(err_w_policy: torch.Tensor, err_w_ref: torch.Tensor, err_l_policy: torch.Tensor,
             err_l_ref: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Diffusion-DPO loss from per-sample denoising errors [B] of winner (w) and loser (l).

    L = -mean log sigmoid(-beta/2 * ((err_w_policy - err_w_ref) - (err_l_policy - err_l_ref))).
    The paper's objective folds T and the weighting omega(lambda_t) into beta; the factor 1/2 follows the
    authors' released training code, so beta means the same as there (but see the module docstring on
    x0 vs eps space). Minimising it lowers the policy's error on winners and raises it on losers, relative
    to the reference. Reference errors are treated as constants. As in DPO, beta sets the strength of the
    implicit KL to the reference: a larger beta stops closer to it.

    Returns (loss, stats): dpo_loss, dpo_accuracy (fraction of pairs the policy already ranks right
    relative to the reference), dpo_margin (mean of the logit), detached.
    """
    errs = (err_w_policy, err_w_ref, err_l_policy, err_l_ref)
    if len({e.shape for e in errs}) != 1 or err_w_policy.ndim != 1:
        shapes = [tuple(e.shape) for e in errs]
        raise ValueError(f"expected four per-sample error vectors [B] of one shape, got {shapes}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    err_w_policy, err_l_policy = err_w_policy.float(), err_l_policy.float()
    err_w_ref, err_l_ref = err_w_ref.detach().float(), err_l_ref.detach().float()
    logit = -0.5 * beta * ((err_w_policy - err_w_ref) - (err_l_policy - err_l_ref))
    loss = -F.logsigmoid(logit).mean()
    stats = {
        "dpo_loss": loss.detach(),
        "dpo_accuracy": (logit.detach() > 0).float().mean(),
        "dpo_margin": logit.detach().mean(),
    }
    return loss, stats


def pick_pairs(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner and loser of each group of `group_size` consecutive samples: flat indices of the best and worst.

    `rewards` is [B * K], prompt-major (sample j of prompt i at i * K + j). A NaN reward never wins
    (it ranks below everything). When all rewards of a group tie, winner == loser and the pair's DPO
    term is log 2 with zero gradient, so the group simply drops out.
    """
    if rewards.ndim != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [B * K] with K = group_size >= 2, got shape {tuple(rewards.shape)} "
                         f"and group_size {group_size}")
    grouped = torch.nan_to_num(rewards.detach().float().view(-1, group_size), nan=float("-inf"))
    offsets = torch.arange(grouped.shape[0], device=rewards.device) * group_size
    return offsets + grouped.argmax(dim=1), offsets + grouped.argmin(dim=1)
