"""RLBranch pieces that need no model: what DPO and GRPO rank by."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from dmdr_cli.recipe import validate
from dmdr_cli.rewards.base import Reward
from dmdr_cli.rl.branch import RLBranch


class PromptRecorder(Reward):
    name = "recorder"
    prompt_prefix = "default prefix"

    def __init__(self):
        super().__init__()
        self.seen: list[list[str]] = []

    def _score(self, images, prompts):
        self.seen.append(list(prompts))
        return images.flatten(1).mean(1)


def recipe(prefix):
    reward = {"name": "custom", "options": {"function": "x:y"}, **({"prompt_prefix": prefix} if prefix is not None else {})}
    return validate({"model": {"family": "sd", "pretrained": "unused"}, "train": {"steps": 2},
                     "rl": {"algorithm": "dpo", "rewards": [reward]}})


def test_scores_apply_each_rewards_prompt_prefix_as_refl_does():
    """DPO's ranking and GRPO's advantages score the prompts ReFL's loss scores: with the reward's prefix."""
    for prefix, expected in ((None, "default prefix a cat"), ("Realistic photo", "Realistic photo a cat"),
                             ("", "a cat")):
        cfg = recipe(prefix)
        reward = PromptRecorder()
        branch = RLBranch(cfg, [(reward, cfg.rl.rewards[0])], torch.device("cpu"))
        branch.family = SimpleNamespace(decode=lambda x0, vae=None: x0)
        total, _ = branch.scores(torch.rand(1, 3, 8, 8), ["a cat"])
        assert reward.seen == [[expected]] and total.shape == (1,)
