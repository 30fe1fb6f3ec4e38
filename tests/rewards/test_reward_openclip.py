"""HPS and CLIP rewards on a tiny random open_clip model: scores, gradients, loading, errors."""

from __future__ import annotations

import pytest
import torch

from dmdr_cli.errors import DmdrError
from dmdr_cli.rewards.clip import ClipReward
from dmdr_cli.rewards.hps import HPS_REPO, HPSReward
from dmdr_cli.rewards.openclip import OpenClipCosineReward, build_open_clip, open_clip_tokenizer


@pytest.fixture
def hps_reward(tiny_open_clip, tiny_open_clip_arch) -> HPSReward:
    return HPSReward.from_modules(tiny_open_clip, open_clip_tokenizer(tiny_open_clip_arch))


@pytest.fixture
def hps_file(tmp_path, tiny_open_clip):
    """An HPS-style checkpoint: a pickle with the open_clip weights under "state_dict"."""
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": tiny_open_clip.state_dict()}, path)
    return path


class Unsafe:
    """Not a tensor: `torch.load(weights_only=True)` must refuse to unpickle it."""


def test_scores_are_one_per_image_and_reach_the_pixels(hps_reward, images, prompts):
    scores = hps_reward(images, prompts)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert ((scores >= -1) & (scores <= 1)).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_weights_are_frozen_and_stay_in_eval(hps_reward):
    assert not any(p.requires_grad for p in hps_reward.parameters())
    hps_reward.train()
    assert not hps_reward.training and not any(m.training for m in hps_reward.modules())


def test_score_is_the_cosine_of_the_model_embeddings(hps_reward, tiny_open_clip, images, prompts):
    from dmdr_cli.rewards.preprocess import clip_preprocess

    with torch.no_grad():
        pixels = clip_preprocess(images, size=32, resize_mode="longest")  # HPSv2's resize-and-pad
        image_features = tiny_open_clip.encode_image(pixels, normalize=True)
        text_features = tiny_open_clip.encode_text(hps_reward.tokenizer(prompts), normalize=True)
        expected = (image_features * text_features).sum(-1)
    torch.testing.assert_close(hps_reward(images, prompts).detach(), expected)


def test_identical_image_and_text_embeddings_score_one(hps_reward, images, prompts, monkeypatch):
    shared = torch.randn(2, 16)
    # The image embedding is `shared` scaled by a positive function of the pixels: same direction, live graph.
    monkeypatch.setattr(hps_reward, "encode_images", lambda pixels: shared * (2 + pixels.mean()))
    monkeypatch.setattr(hps_reward, "encode_texts", lambda texts: 3 * shared)
    torch.testing.assert_close(hps_reward(images, prompts).detach(), torch.ones(2))


def test_hps_file_loads_with_weights_only(hps_file, hps_reward, tiny_open_clip_arch, images, prompts, monkeypatch):
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    from_file = HPSReward.from_pretrained(str(hps_file), arch=tiny_open_clip_arch)
    assert calls and all(call.get("weights_only") is True for call in calls)
    torch.testing.assert_close(from_file(images, prompts), hps_reward(images, prompts))
    # A folder holding the file works too.
    assert HPSReward.from_pretrained(str(hps_file.parent), arch=tiny_open_clip_arch).source == str(hps_file)


def test_checkpoint_with_objects_is_refused(tmp_path, tiny_open_clip, tiny_open_clip_arch):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": tiny_open_clip.state_dict(), "extra": Unsafe()}, path)
    with pytest.raises(DmdrError, match="weights_only=True"):
        HPSReward.from_pretrained(str(path), arch=tiny_open_clip_arch)


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path, tiny_open_clip_arch):
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(3)}}, path)
    with pytest.raises(DmdrError, match=r"does not fit open_clip .*: \d+ missing keys \(e\.g\. "):
        HPSReward.from_pretrained(str(path), arch=tiny_open_clip_arch)


@pytest.mark.parametrize("version,filename", [("v2.1", "HPS_v2.1_compressed.pt"), ("v2.0", "HPS_v2_compressed.pt")])
def test_missing_hps_file_names_file_and_source(tmp_path, version, filename):
    with pytest.raises(DmdrError) as error:
        HPSReward.from_pretrained(str(tmp_path), version=version, key="rl.rewards[0]")
    message = str(error.value)
    assert message.startswith(f"{filename} not found at folder {str(tmp_path)!r}")
    assert HPS_REPO in message and "rl.rewards[0].path" in message and "\n" not in message


def test_missing_hps_in_offline_hub_cache_names_the_repo():
    with pytest.raises(DmdrError, match=r"HPS_v2.1_compressed.pt not found at the Hugging Face repo xswu/HPSv2"):
        HPSReward.from_pretrained(None)


def test_missing_dfn5b_clip_names_the_open_clip_file_and_repo():
    # Resolved before the (large) ViT-H-14 is built, so this costs nothing.
    with pytest.raises(DmdrError, match=r"open_clip_model.safetensors \(or open_clip_pytorch_model.bin\) not found "
                                        r"at the Hugging Face repo apple/DFN5B-CLIP-ViT-H-14"):
        ClipReward.from_pretrained()


def test_clip_reward_loads_an_open_clip_safetensors_folder(tmp_path, tiny_open_clip, tiny_open_clip_arch, images,
                                                           prompts):
    from safetensors.torch import save_file

    save_file(tiny_open_clip.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    reward = ClipReward.from_pretrained(str(tmp_path), arch=tiny_open_clip_arch, pretrained=None)
    expected = OpenClipCosineReward.from_modules(tiny_open_clip, open_clip_tokenizer(tiny_open_clip_arch))
    torch.testing.assert_close(reward(images, prompts), expected(images, prompts))


def test_unknown_tag_and_architecture_are_clear():
    with pytest.raises(DmdrError, match="no pretrained tag 'nope'"):
        ClipReward.from_pretrained(arch="ViT-H-14", pretrained="nope")
    with pytest.raises(DmdrError, match="no architecture 'ViT-H-41'"):
        build_open_clip("ViT-H-41")


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradient(hps_reward, images, prompts):
    calls = []
    # A pre-hook on the block's first op: torch stops recomputing as soon as the saved tensors are rebuilt,
    # so hooks that fire after a later op's forward may never see the recomputation.
    hps_reward.model.visual.transformer.resblocks[0].ln_1.register_forward_pre_hook(lambda *_: calls.append(1))

    def image_gradient():
        images.grad = None
        hps_reward(images, prompts).sum().backward()
        return images.grad.clone()

    plain = image_gradient()
    assert hps_reward.set_gradient_checkpointing(True)
    calls.clear()
    checkpointed = image_gradient()
    assert len(calls) == 2  # forward + recomputation in backward
    torch.testing.assert_close(checkpointed, plain)


def test_an_unreadable_hps_file_fails_before_the_model_is_built(tmp_path, monkeypatch):
    """A truncated download must not cost the ViT-H-14 build (tens of seconds on a CPU) before its error."""
    import dmdr_cli.rewards.hps as hps

    def no_build(*_args, **_kwargs):
        raise AssertionError("the model was built before the weights file was read")

    monkeypatch.setattr(hps, "build_open_clip", no_build)
    broken = tmp_path / "HPS_v2.1_compressed.pt"
    broken.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(DmdrError, match="not a readable torch checkpoint|not a plain tensor checkpoint"):
        HPSReward.from_pretrained(str(broken))
