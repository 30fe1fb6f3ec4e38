"""Rewards that score an image by the cosine between its CLIP-style embedding and its prompt's."""

from __future__ import annotations

from abc import abstractmethod

import torch

from .base import Reward, cosine


class ClipSimilarityReward(Reward):
    """score = logit_scale * cos(image embedding, text embedding); HPS and CLIP use logit_scale 1."""

    logit_scale: float = 1.0

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (B, 3, S, S) -> image embeddings (B, D), differentiable."""

    @abstractmethod
    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text embeddings (B, D) on the reward's device."""

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image_features = self.encode_images(self.preprocess(images))
        # The text tower is frozen and prompts are not optimised: keeping its graph would only cost memory.
        with torch.no_grad():
            text_features = self.encode_texts(prompts)
        return self.logit_scale * cosine(image_features, text_features)
