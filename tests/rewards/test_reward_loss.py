"""RL losses, default margins in each reward's units, the registry and build_reward."""

from __future__ import annotations

import pytest
import torch

from dmdr_cli.errors import DmdrError
from dmdr_cli.recipe.schema import RewardSpec
from dmdr_cli.rewards import REWARDS, Reward, build_reward, combined_reward_loss, register_reward, reward_loss
from dmdr_cli.rewards.aesthetic import AestheticReward
from dmdr_cli.rewards.base import resolve_dtype
from dmdr_cli.rewards.clip import ClipReward
from dmdr_cli.rewards.custom import CustomReward
from dmdr_cli.rewards.hps import HPSReward
from dmdr_cli.rewards.pickscore import PickScoreReward

# Typical scores, in each reward's units, from the DMDR paper's tables (ALGORITHM.md): tables print HPS and
# CLIP as 100 x cosine (27.15-32.90 and 33.19-35.86); PickScore 21.05-22.89; aesthetic 5.59-6.18.
# Each range is widened a little past the best published figure: the RL branch exists to raise them.
TYPICAL_SCORES = {
    HPSReward: (0.27, 0.30, 0.33, 0.36),
    ClipReward: (0.30, 0.33, 0.36, 0.40),
    PickScoreReward: (21.0, 22.0, 22.9, 24.0),
    AestheticReward: (5.5, 5.9, 6.2, 7.0),
}


@pytest.mark.parametrize("reward_class", list(TYPICAL_SCORES), ids=lambda c: c.name)
def test_default_margin_keeps_the_hinge_gradient_alive_at_typical_scores(reward_class):
    assert reward_class.units and reward_class.default_margin is not None
    score = torch.tensor(TYPICAL_SCORES[reward_class], requires_grad=True)
    reward_loss(score, reward_class.default_margin, "hinge").backward()
    assert (score.grad < 0).all(), f"{reward_class.name}: hinge inactive at {score.grad}"


def test_a_cosine_margin_on_pickscore_would_switch_the_loss_off():
    """The trap the per-reward margins avoid: DMDR's 0.7 is a cosine margin, PickScore is ~100 x cosine."""
    score = torch.tensor(TYPICAL_SCORES[PickScoreReward], requires_grad=True)
    reward_loss(score, 0.7, "hinge").backward()
    assert (score.grad == 0).all()


def test_hinge_and_linear_losses():
    score = torch.tensor([0.2, 0.9], requires_grad=True)
    loss = reward_loss(score, 0.7, "hinge")
    assert loss.item() == pytest.approx(0.25)  # mean(relu(0.5), relu(-0.2))
    loss.backward()
    torch.testing.assert_close(score.grad, torch.tensor([-0.5, 0.0]))
    assert reward_loss(score, None, "linear").item() == pytest.approx(-0.55)
    with pytest.raises(ValueError, match="needs a margin"):
        reward_loss(score, None, "hinge")


class Recorder(Reward):
    """Scores every image `value`, scaled by the image mean so the graph is live; remembers its prompts."""

    name = "recorder"
    units = "test units"
    default_margin = 10.0
    prompt_prefix = "Default prefix"

    def __init__(self, value: float):
        super().__init__()
        self.value, self.seen = value, []

    def _score(self, images, prompts):
        self.seen.append(prompts)
        return self.value * 2 * images.mean(dim=(1, 2, 3))


def test_combined_loss_applies_weights_margins_and_prefixes():
    images = torch.full((2, 3, 8, 8), 0.5, requires_grad=True)  # mean 0.5: scores equal `value`
    prompts = ["a cat", "a dog"]
    a, b, c = Recorder(4.0), Recorder(1.0), Recorder(3.0)
    specs = [RewardSpec(name="recorder", weight=0.5),                             # default margin 10, prefix
             RewardSpec(name="recorder", weight=2.0, margin=3.0, prompt_prefix="Realistic photo"),
             RewardSpec(name="recorder", weight=1.0, loss="linear", prompt_prefix="")]
    loss, scores = combined_reward_loss([(a, specs[0]), (b, specs[1]), (c, specs[2])], images, prompts)
    assert loss.item() == pytest.approx(0.5 * (10 - 4) + 2.0 * (3 - 1) + 1.0 * (-3))
    assert a.seen == [["Default prefix a cat", "Default prefix a dog"]]
    assert b.seen == [["Realistic photo a cat", "Realistic photo a dog"]]
    assert c.seen == [["a cat", "a dog"]]
    assert list(scores) == ["recorder", "recorder_2", "recorder_3"]
    assert [s.item() for s in scores.values()] == pytest.approx([4.0, 1.0, 3.0])
    assert not any(s.requires_grad for s in scores.values())
    loss.backward()
    assert images.grad.abs().sum() > 0


def test_combined_loss_reaches_pixels_through_real_rewards(tiny_open_clip, tiny_open_clip_arch, tiny_hf_clip,
                                                           tiny_clip_tokenizer, images, prompts):
    from dmdr_cli.rewards.aesthetic import AestheticHead
    from dmdr_cli.rewards.openclip import open_clip_tokenizer

    rewards = [
        (HPSReward.from_modules(tiny_open_clip, open_clip_tokenizer(tiny_open_clip_arch)), RewardSpec(name="hps")),
        (PickScoreReward.from_modules(tiny_hf_clip, tiny_clip_tokenizer), RewardSpec(name="pickscore")),
        (AestheticReward.from_modules(tiny_open_clip.visual, AestheticHead(16)), RewardSpec(name="aesthetic")),
    ]
    loss, scores = combined_reward_loss(rewards, images, prompts)
    assert set(scores) == {"hps", "pickscore", "aesthetic"}
    loss.backward()
    assert images.grad.abs().sum() > 0


def test_builtin_names_and_registration():
    assert {"hps", "pickscore", "clip", "aesthetic", "custom"} <= set(REWARDS)
    register_reward("dmdr-test-constant", lambda spec, key: CustomReward(lambda x, p: x.mean(dim=(1, 2, 3)),
                                                                          default_margin=1.0))
    try:
        reward = build_reward(RewardSpec(name="dmdr-test-constant"))
        assert reward(torch.rand(1, 3, 4, 4), ["x"]).shape == (1,)
        with pytest.raises(ValueError, match="already registered"):
            register_reward("dmdr-test-constant", lambda spec, key: None)
    finally:
        REWARDS.pop("dmdr-test-constant")


def test_unknown_names_and_options_are_recipe_errors():
    with pytest.raises(DmdrError, match=r"rl.rewards\[1\].name: unknown reward 'hpss' \(did you mean 'hps'\?\)"):
        build_reward(RewardSpec(name="hpss"), key="rl.rewards[1]")
    with pytest.raises(DmdrError, match=r"rl.rewards\[i\].options: unknown option 'archh' for reward 'clip' "
                                        r"\(known: arch, pretrained\)"):
        build_reward(RewardSpec(name="clip", options={"archh": "ViT-B-32"}))


def test_build_reward_from_a_recipe_entry(tmp_path, tiny_open_clip, tiny_open_clip_arch, images, prompts):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": tiny_open_clip.state_dict()}, path)
    spec = RewardSpec(name="hps", path=str(path), options={"arch": tiny_open_clip_arch})
    reward = build_reward(spec, "cpu", torch.bfloat16, gradient_checkpointing=True)
    assert reward.dtype == torch.float32  # CPU always runs fp32
    assert not reward.training and not any(p.requires_grad for p in reward.parameters())
    assert reward.model.visual.transformer.grad_checkpointing
    assert reward(images, prompts).shape == (2,)


def test_missing_weights_through_build_reward_name_the_recipe_key(tmp_path):
    with pytest.raises(DmdrError, match=r"^HPS_v2.1_compressed.pt not found at folder .*: download it from the "
                                        r"Hugging Face repo xswu/HPSv2 and pass its path as rl.rewards\[0\].path$"):
        build_reward(RewardSpec(name="hps", path=str(tmp_path)), key="rl.rewards[0]")


def test_dtype_policy():
    assert resolve_dtype("cpu", torch.bfloat16) == torch.float32
    assert resolve_dtype("cuda") == torch.bfloat16
    assert resolve_dtype("cuda", torch.float16) == torch.float16
