"""Differentiable reward and score models with one call signature: `reward(images, prompts) -> scores[B]`.

Built-ins: hps (HPSv2/2.1), pickscore, clip (open_clip, DFN5B by default), aesthetic (LAION v2), custom.
The same models serve as training rewards (ReFL, DPO, GRPO) and evaluation scores.
"""

from .base import Reward, resolve_dtype
from .loss import combined_reward_loss, reward_loss
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess
from .registry import REWARDS, build_reward, register_reward

__all__ = [
    "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "REWARDS", "Reward", "build_reward", "clip_preprocess",
    "combined_reward_loss", "register_reward", "resolve_dtype", "reward_loss",
]
