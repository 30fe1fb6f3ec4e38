"""SDXL: the SD UNet recipe with two CLIP encoders, pooled embeddings and micro-conditioning time ids.

Conditioning as StableDiffusionXLPipeline builds it: the penultimate hidden states of CLIP-L
(CLIPTextModel) and OpenCLIP-G (CLIPTextModelWithProjection) concatenated on the feature axis, the
projected pooled output of the second encoder, and add_time_ids = (original size, crop top-left,
target size) = (res, res, 0, 0, res, res) for square training at `model.resolution`.
"""

from __future__ import annotations

import torch

from .base import Cond, tokenize
from .sd import UNetFamily


class SDXLFamily(UNetFamily):
    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    def time_ids(self, batch: int) -> torch.Tensor:
        """(original_size, crops_coords_top_left, target_size) per sample, as the pipeline's _get_add_time_ids."""
        res = float(self.resolution)
        return torch.tensor([[res, res, 0.0, 0.0, res, res]]).repeat(batch, 1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        tokenizers, encoders = self._text_encoders()
        states = []
        for tokenizer, encoder in zip(tokenizers, encoders):
            ids = tokenize(tokenizer, prompts, tokenizer.model_max_length).input_ids.to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # SDXL always conditions on the penultimate layer
        pooled = out.text_embeds  # only the last (projection) encoder's pooled output is used
        device = states[-1].device
        return Cond(text=torch.cat([s.to(device) for s in states], dim=-1), pooled=pooled,
                    time_ids=self.time_ids(len(prompts)).to(device, pooled.dtype))

    def placeholder_cond(self, batch, device="cpu", dtype=torch.float32):
        config = self.denoiser.config
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim  # 6 time ids
        return Cond(text=torch.zeros(batch, self.clip_tokens, config.cross_attention_dim, device=device, dtype=dtype),
                    pooled=torch.zeros(batch, pooled, device=device, dtype=dtype),
                    time_ids=self.time_ids(batch).to(device, dtype))

    def _added_cond_kwargs(self, cond: Cond, device, dtype: torch.dtype) -> dict:
        return {"text_embeds": cond["pooled"].to(device, dtype), "time_ids": cond["time_ids"].to(device, dtype)}
