"""bf16 on a GPU: the dtype a training run uses (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from dmdr_cli.recipe.schema import RewardSpec
from dmdr_cli.rewards import combined_reward_loss
from dmdr_cli.rewards.aesthetic import AestheticHead, AestheticReward
from dmdr_cli.rewards.base import resolve_dtype
from dmdr_cli.rewards.hps import HPSReward
from dmdr_cli.rewards.openclip import open_clip_tokenizer
from dmdr_cli.rewards.pickscore import PickScoreReward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_bf16_rewards_on_cuda_match_fp32_and_pass_gradients(tiny_open_clip, tiny_open_clip_arch, tiny_hf_clip,
                                                             tiny_clip_tokenizer, prompts):
    rewards = [
        (HPSReward.from_modules(tiny_open_clip, open_clip_tokenizer(tiny_open_clip_arch)), RewardSpec(name="hps")),
        (PickScoreReward.from_modules(tiny_hf_clip, tiny_clip_tokenizer), RewardSpec(name="pickscore")),
        (AestheticReward.from_modules(tiny_open_clip.visual, AestheticHead(16)), RewardSpec(name="aesthetic")),
    ]
    images = torch.rand(2, 3, 48, 40, device="cuda")
    reference = {reward.name: reward.to("cuda")(images, prompts) for reward, _ in rewards}  # fp32 on the GPU
    for reward, _ in rewards:
        reward.to(device="cuda", dtype=resolve_dtype("cuda"))
        reward.set_gradient_checkpointing(True)
    images.requires_grad_(True)
    loss, scores = combined_reward_loss(rewards, images, prompts)
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    for reward, _ in rewards:
        assert reward.dtype == torch.bfloat16
        bf16 = reward(images.detach(), prompts)
        assert bf16.dtype == torch.float32
        # bf16 keeps ~3 significant digits: cosines within 0.02, PickScore (100 x cos) within 2.
        tolerance = 2.0 if reward.name == "pickscore" else 0.02
        torch.testing.assert_close(bf16, reference[reward.name], atol=tolerance, rtol=0)
