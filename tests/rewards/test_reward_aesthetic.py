"""LAION aesthetic predictor v2: the head, the full reward, loading and dtype."""

from __future__ import annotations

import pytest
import torch

from dmdr_cli.errors import DmdrError
from dmdr_cli.rewards.aesthetic import AESTHETIC_FILE, AestheticHead, AestheticReward
from dmdr_cli.rewards.preprocess import clip_preprocess


@pytest.fixture
def head() -> AestheticHead:
    torch.manual_seed(2)
    return AestheticHead(in_features=16)


@pytest.fixture
def aesthetic(tiny_open_clip, head) -> AestheticReward:
    return AestheticReward.from_modules(tiny_open_clip.visual, head)


def hand_computed_head(head: AestheticHead, x: torch.Tensor) -> torch.Tensor:
    """The published layout: five affine maps in a row (dropout off at inference), nothing in between."""
    state = head.state_dict()
    for index in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    return x.squeeze(-1)


def test_head_has_the_published_keys_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in AestheticHead().state_dict().items()}
    assert shapes == {
        "layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
        "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16), "layers.7.bias": (1,),
    }


def test_score_is_the_head_on_the_unit_image_embedding(aesthetic, tiny_open_clip, head, images, prompts):
    with torch.no_grad():
        embedding = tiny_open_clip.visual(clip_preprocess(images, size=32))
        expected = hand_computed_head(head, embedding / embedding.norm(dim=-1, keepdim=True))
    scores = aesthetic(images, prompts)
    torch.testing.assert_close(scores.detach(), expected)
    scores.sum().backward()
    assert images.grad.abs().sum() > 0


def test_dropout_stays_off_when_a_trainer_calls_train(aesthetic, images, prompts):
    aesthetic.train()
    with torch.no_grad():
        torch.testing.assert_close(aesthetic(images, prompts), aesthetic(images, prompts))


def test_head_stays_fp32_when_the_reward_goes_bf16(aesthetic):
    aesthetic.to(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in aesthetic.head.parameters())
    assert aesthetic.visual.conv1.weight.dtype == torch.bfloat16


def test_loads_head_and_clip_files(tmp_path, aesthetic, tiny_open_clip, tiny_open_clip_arch, head, images, prompts):
    from safetensors.torch import save_file

    torch.save(head.state_dict(), tmp_path / AESTHETIC_FILE)
    save_file(tiny_open_clip.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    loaded = AestheticReward.from_pretrained(str(tmp_path / AESTHETIC_FILE), clip_path=str(tmp_path),
                                             clip_arch=tiny_open_clip_arch, clip_pretrained=None)
    torch.testing.assert_close(loaded(images, prompts), aesthetic(images, prompts))


def test_missing_head_names_the_file_and_where_to_get_it():
    with pytest.raises(DmdrError) as error:
        AestheticReward.from_pretrained(None, key="rl.rewards[1]")
    assert str(error.value) == (
        "sac+logos+ava1-l14-linearMSE.pth has no default location: download it from "
        "github.com/christophschuhmann/improved-aesthetic-predictor and pass its path as rl.rewards[1].path")


def test_missing_openai_clip_names_the_open_clip_hub_copy(tmp_path, head):
    torch.save(head.state_dict(), tmp_path / AESTHETIC_FILE)
    with pytest.raises(DmdrError, match=r"not found at the Hugging Face repo timm/vit_large_patch14_clip_224.openai"
                                        r".* rl.rewards\[i\].options.clip_path"):
        AestheticReward.from_pretrained(str(tmp_path / AESTHETIC_FILE))
