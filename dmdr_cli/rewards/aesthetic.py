"""LAION aesthetic predictor v2 (github.com/christophschuhmann/improved-aesthetic-predictor): a linear
MLP on the L2-normalised OpenAI CLIP ViT-L/14 image embedding, regressing 1-10 ratings (SAC, LAION-Logos,
AVA). Weights: `sac+logos+ava1-l14-linearMSE.pth`, a plain state dict (layers.0/2/4/6/7).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Reward
from .openclip import ImageInput, image_input_of, load_open_clip
from .weights import load_into, load_state_dict, resolve_file

AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_SOURCE = "github.com/christophschuhmann/improved-aesthetic-predictor"
# OpenAI's ViT-L/14 was trained with QuickGELU; open_clip's 'openai' tag says so and is loaded from the hub.
CLIP_ARCH, CLIP_TAG = "ViT-L-14", "openai"


class AestheticHead(nn.Module):
    """768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts and no non-linearities, as published (so the
    whole head is one affine map; the layers are kept so the published state dict loads as is)."""

    def __init__(self, in_features: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)


class AestheticReward(Reward):
    name = "aesthetic"
    units = "aesthetic score 1-10"
    # Typical scores are ~5.6-6.2 (ALGORITHM.md ablation and headline tables): 0.7 would switch the hinge
    # off. 10 is the top of the rating scale the head regresses, so the hinge is always active, as the
    # authors' 0.7 is on cosines of ~0.3.
    default_margin = 10.0

    def __init__(self, visual: nn.Module, head: AestheticHead, image_input: ImageInput | None = None,
                 source: str = "in-memory model"):
        super().__init__()
        self.visual = visual
        self.head = head
        spec = image_input or image_input_of(visual)
        self.input_size, self.image_mean, self.image_std = spec.size, spec.mean, spec.std
        self.resize_mode, self.interpolation = spec.resize_mode, spec.interpolation
        self.source = source
        self.freeze()

    @classmethod
    def from_modules(cls, visual: nn.Module, head: AestheticHead, image_input: ImageInput | None = None):
        """visual: an open_clip image tower (`clip_model.visual`) whose output is the projected embedding."""
        return cls(visual, head, image_input)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, clip_path: str | None = None, clip_arch: str = CLIP_ARCH,
                        clip_pretrained: str | None = CLIP_TAG, key: str = "rl.rewards[i]") -> "AestheticReward":
        """path: the head's .pth (file, folder or hub id; no default location); clip_path: OpenAI CLIP
        ViT-L/14 open_clip weights (None: open_clip's hub copy for clip_arch/clip_pretrained)."""
        head_file = resolve_file(path, AESTHETIC_FILE, default_repo=None, get_it=AESTHETIC_SOURCE,
                                 setting=f"{key}.path")
        clip_model, image_input = load_open_clip(clip_arch, tag=clip_pretrained, path=clip_path,
                                                 setting=f"{key}.options.clip_path")
        head = AestheticHead(in_features=int(clip_model.visual.output_dim))
        load_into(head, load_state_dict(head_file), head_file, "the LAION aesthetic MLP")
        return cls(clip_model.visual, head, image_input, source=str(head_file))

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        embedding = self.visual(self.preprocess(images)).float()
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)  # the predictor was fit on unit embeddings
        return self.head(embedding)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        # The 1M-parameter head costs nothing in fp32, and bf16 would round scores of ~6 by ~0.02.
        self.head.float()
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> bool:
        self.visual.set_grad_checkpointing(enabled)
        return True
