"""PickScore on a tiny random transformers CLIPModel with PickScore's logit scale."""

from __future__ import annotations

import pytest
import torch

from dmdr_cli.errors import DmdrError
from dmdr_cli.rewards.pickscore import PICKSCORE_MODEL, PICKSCORE_PROCESSOR, PickScoreReward


@pytest.fixture
def pickscore(tiny_hf_clip, tiny_clip_tokenizer) -> PickScoreReward:
    return PickScoreReward.from_modules(tiny_hf_clip, tiny_clip_tokenizer)


@pytest.fixture
def saved_model(tmp_path, tiny_hf_clip, tiny_clip_tokenizer):
    model_dir, tokenizer_dir = tmp_path / "model", tmp_path / "processor"
    tiny_hf_clip.save_pretrained(model_dir)
    tiny_clip_tokenizer.save_pretrained(tokenizer_dir)
    return model_dir, tokenizer_dir


def test_scores_are_logit_scale_times_cosine_and_differentiable(pickscore, tiny_hf_clip, tiny_clip_tokenizer,
                                                                images, prompts):
    from dmdr_cli.rewards.preprocess import clip_preprocess

    scores = pickscore(images, prompts)
    assert scores.shape == (2,) and pickscore.logit_scale == pytest.approx(100.0, rel=1e-4)
    with torch.no_grad():  # the model card's computation, on our preprocessed pixels
        tokens = tiny_clip_tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt")
        image_embs = tiny_hf_clip.get_image_features(pixel_values=clip_preprocess(images, size=32)).pooler_output
        text_embs = tiny_hf_clip.get_text_features(**tokens).pooler_output
        image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
        text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
        expected = tiny_hf_clip.logit_scale.exp() * (image_embs * text_embs).sum(-1)
    torch.testing.assert_close(scores.detach(), expected)
    scores.sum().backward()
    assert images.grad.abs().sum() > 0


def test_identical_embeddings_score_the_logit_scale(pickscore, images, prompts, monkeypatch):
    shared = torch.randn(2, 16)
    monkeypatch.setattr(pickscore, "encode_images", lambda pixels: shared * (1 + pixels.mean() ** 2))
    monkeypatch.setattr(pickscore, "encode_texts", lambda texts: shared)
    torch.testing.assert_close(pickscore(images, prompts).detach(), torch.full((2,), pickscore.logit_scale))


def test_logit_scale_survives_a_bf16_cast(pickscore):
    pickscore.to(torch.bfloat16)
    assert pickscore.logit_scale == pytest.approx(100.0, rel=1e-4)
    assert pickscore.dtype == torch.bfloat16


def test_loads_a_saved_model_folder_and_tokenizer(saved_model, pickscore, images, prompts):
    model_dir, tokenizer_dir = saved_model
    loaded = PickScoreReward.from_pretrained(str(model_dir), processor=str(tokenizer_dir))
    torch.testing.assert_close(loaded(images, prompts), pickscore(images, prompts))


def test_missing_files_are_named(tmp_path, saved_model):
    model_dir, tokenizer_dir = saved_model
    with pytest.raises(DmdrError, match=rf"config.json not found at folder '{tmp_path}'.*{PICKSCORE_MODEL}"):
        PickScoreReward.from_pretrained(str(tmp_path), processor=str(tokenizer_dir))
    with pytest.raises(DmdrError, match=rf"tokenizer.json \(or vocab.json\) not found at folder .*{PICKSCORE_PROCESSOR}"
                                        r" and pass its path as rl.rewards\[3\].options.processor"):
        PickScoreReward.from_pretrained(str(model_dir), processor=str(tmp_path), key="rl.rewards[3]")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(DmdrError, match=r"^model.safetensors \(or pytorch_model.bin.*\) not found at folder"):
        PickScoreReward.from_pretrained(str(model_dir), processor=str(tokenizer_dir))


def test_default_hub_model_missing_offline_names_the_repo():
    with pytest.raises(DmdrError, match=rf"config.json not found at the Hugging Face repo {PICKSCORE_MODEL}"):
        PickScoreReward.from_pretrained()


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradient(pickscore, images, prompts):
    calls = []
    layer = pickscore.model.vision_model.encoder.layers[0]
    layer.layer_norm1.register_forward_pre_hook(lambda *_: calls.append(1))

    def image_gradient():
        images.grad = None
        pickscore(images, prompts).sum().backward()
        return images.grad.clone()

    plain = image_gradient()
    assert pickscore.set_gradient_checkpointing(True)
    pickscore.eval()  # a trainer's .eval()/.train() must not undo it
    calls.clear()
    checkpointed = image_gradient()
    assert len(calls) == 2
    torch.testing.assert_close(checkpointed, plain)
    assert not any(m.training for m in layer.children())
