"""world-clip's network: a CLIP-shaped pair of towers small enough to train on a CPU in minutes.

Image tower: 3x3 conv stages (GroupNorm, SiLU), each after the first halving the resolution, then the
whole feature map flattened into the embedding. Flattening rather than average pooling keeps where
things are (a pooled CLIP tower has to recover position from padding effects alone). Text tower: a
CLIPTextModel over the world tokenizer; its end-of-text state, projected, is the text embedding.

Saved as `config.json` (the constructor's arguments), `model.safetensors` and `tokenizer/`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .teacher_text import world_text_encoder, world_tokenizer

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"


@dataclass
class WorldClipConfig:
    resolution: int = 24
    image_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    embed_dim: int = 64
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 64
    default_margin: float | None = None  # set after training, from the scores of clean renders

    @property
    def feature_side(self) -> int:
        return self.resolution // 2 ** (len(self.image_channels) - 1)


class ImageTower(nn.Module):
    def __init__(self, config: WorldClipConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width_in = 3
        for i, width in enumerate(config.image_channels):
            layers += [nn.Conv2d(width_in, width, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(min(8, width), width), nn.SiLU()]
            width_in = width
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(width_in * config.feature_side**2, config.embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(pixels).flatten(1))


class WorldClip(nn.Module):
    """Image and text embeddings in one space; `logit_scale` is the learned InfoNCE temperature."""

    def __init__(self, config: WorldClipConfig, seed: int = 0):
        super().__init__()
        if config.resolution % 2 ** (len(config.image_channels) - 1):
            raise ValueError(f"resolution {config.resolution} does not halve {len(config.image_channels) - 1} times")
        self.config = config
        self.tokenizer = world_tokenizer(config.max_tokens)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.image_tower = ImageTower(config)
            self.text_tower = world_text_encoder(self.tokenizer, config.text_width, config.text_layers,
                                                 config.text_heads, seed=seed + 1)
            self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, resolution, resolution) pixels -> unnormalised embeddings (B, D)."""
        return self.image_tower(pixels)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.config.max_tokens,
                             truncation=True, return_tensors="pt").input_ids.to(self.logit_scale.device)
        return self.text_projection(self.text_tower(ids).pooler_output)

    def similarity(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine of every image with every prompt, (B_images, B_prompts)."""
        images = F.normalize(self.encode_images(pixels), dim=-1)
        texts = F.normalize(self.encode_texts(prompts), dim=-1)
        return images @ texts.T

    def paired_cosine(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine of image i with prompt i, (B,)."""
        images = F.normalize(self.encode_images(pixels), dim=-1)
        texts = F.normalize(self.encode_texts(prompts), dim=-1)
        return (images * texts).sum(dim=-1)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        self.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))

    @classmethod
    def load(cls, folder: Path) -> "WorldClip":
        from safetensors.torch import load_file
        from transformers import CLIPTokenizer

        config = WorldClipConfig(**json.loads((folder / CONFIG_FILE).read_text()))
        model = cls(config)
        model.tokenizer = CLIPTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return model
