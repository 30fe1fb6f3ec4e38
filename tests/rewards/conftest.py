"""Tiny random reward models built without downloads (open_clip and transformers CLIPs a few MB big)."""

from __future__ import annotations

import json
import string

import pytest
import torch

TINY_OPEN_CLIP = "dmdr-test-tiny-clip"
TINY_EMBED_DIM = 16


@pytest.fixture(scope="session")
def tiny_open_clip_arch(tmp_path_factory) -> str:
    """Registers a tiny open_clip architecture. The text tower keeps open_clip's 49408-token vocabulary and
    77-token context so the real, bundled tokenizer (the one HPS and DFN5B use) works with it."""
    import open_clip

    config = {
        "embed_dim": TINY_EMBED_DIM,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("open_clip_config") / f"{TINY_OPEN_CLIP}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return TINY_OPEN_CLIP


@pytest.fixture
def tiny_open_clip(tiny_open_clip_arch):
    from dmdr_cli.rewards.openclip import build_open_clip

    torch.manual_seed(0)
    return build_open_clip(tiny_open_clip_arch)


@pytest.fixture(scope="session")
def tiny_clip_tokenizer():
    """A real transformers CLIPTokenizer over single letters (BPE with no merges splits words into them)."""
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase) + [
        c + "</w>" for c in string.ascii_lowercase]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


@pytest.fixture
def tiny_hf_clip(tiny_clip_tokenizer):
    """A transformers CLIPModel with PickScore's logit scale (exp(4.6052) = 100)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tiny_clip_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         eos_token_id=tiny_clip_tokenizer.eos_token_id, bos_token_id=0, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=TINY_EMBED_DIM, logit_scale_init_value=4.6052,
    )
    return CLIPModel(config).eval()


@pytest.fixture
def images() -> torch.Tensor:
    """A batch of two non-square [0, 1] images that require grad, as decoder outputs would."""
    torch.manual_seed(1)
    return torch.rand(2, 3, 48, 40, requires_grad=True)


@pytest.fixture
def prompts() -> list[str]:
    return ["a red cube on a table", "a cat"]
