"""L_rl for ReFL: each reward's score turned into a loss with its weight, margin and prompt prefix.

DMDR's loss per reward is relu(margin - r) (authors' train_sd3_refl_deepspeed.py); margins are in the
reward's own units, so `spec.margin = None` takes the reward's `default_margin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import torch

from .base import Reward

if TYPE_CHECKING:  # the recipe schema needs pydantic; rewards do not
    from ..recipe.schema import RewardSpec


def reward_loss(score: torch.Tensor, margin: float | None, kind: Literal["hinge", "linear"]) -> torch.Tensor:
    """hinge: mean relu(margin - r) (zero gradient once r >= margin); linear: mean -r."""
    if kind == "hinge":
        if margin is None:
            raise ValueError("a hinge reward loss needs a margin in the reward's units")
        return torch.relu(margin - score).mean()
    if kind == "linear":
        return (-score).mean()
    raise ValueError(f"reward loss kind must be 'hinge' or 'linear', not {kind!r}")


def effective_margin(reward: Reward, spec: RewardSpec) -> float | None:
    return spec.margin if spec.margin is not None else reward.default_margin


def effective_prefix(reward: Reward, spec: RewardSpec) -> str:
    """The recipe's prefix, else the reward's training default; "" in the recipe turns it off."""
    prefix = spec.prompt_prefix if spec.prompt_prefix is not None else reward.prompt_prefix
    return prefix or ""


def with_prefix(prompts: Sequence[str], prefix: str) -> list[str]:
    # Joined by one space, as the authors join "Realistic photo" and the prompt.
    return [f"{prefix} {p}" if prefix else p for p in prompts]


def combined_reward_loss(rewards_with_specs: Sequence[tuple[Reward, RewardSpec]], images: torch.Tensor,
                         prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum_i weight_i * loss_i, and each reward's mean score (detached, in its units) for logging.

    Log keys are reward names; a name used twice gets "_2", "_3", ... Scores stay tensors so callers can
    average them over steps or ranks without a device sync per step.
    """
    total = images.new_zeros((), dtype=torch.float32)
    scores_for_log: dict[str, torch.Tensor] = {}
    for reward, spec in rewards_with_specs:
        score = reward(images, with_prefix(prompts, effective_prefix(reward, spec)))
        total = total + spec.weight * reward_loss(score, effective_margin(reward, spec), spec.loss)
        scores_for_log[_unique_key(reward.name, scores_for_log)] = score.detach().mean()
    return total, scores_for_log


def _unique_key(name: str, taken: dict) -> str:
    key, n = name, 1
    while key in taken:
        n += 1
        key = f"{name}_{n}"
    return key
