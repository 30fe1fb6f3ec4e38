"""SD3 / SD3.5: an MMDiT (SD3Transformer2DModel) trained with rectified flow, three text encoders.

Conditioning as StableDiffusion3Pipeline builds it: penultimate hidden states of CLIP-L and CLIP-G
concatenated on the feature axis and zero-padded to T5's width, then joined on the sequence axis with
T5's final states (`max_text_tokens` tokens; all zeros when the folder has no T5, as the pipeline
does); pooled = both CLIP projections concatenated. Time: sigma = t, model timestep = 1000 t.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from .base import Cond, Family, explicit_times, token_map, tokenize
from .loading import load_components, module_dtype, resolve_pipeline
from .schedules import FlowSchedule, shifted_flow_times
from .vae import decode_latents, encode_images

# Attention projections of both MMDiT streams: DMDR's generator LoRA and DynaDG's guidance LoRA.
MMDIT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

DEFAULT_T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length; DMDR's recipes set 128


class SD3Family(Family):
    name = "sd3"
    denoiser_subfolder = "transformer"
    pipeline_class = "StableDiffusion3Pipeline"
    default_sampler = "ode"
    generator_lora_targets = MMDIT_LORA_TARGETS
    guidance_lora_targets = MMDIT_LORA_TARGETS
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"),
                       ("tokenizer_3", "text_encoder_3"))

    def __init__(self, components, *, vae_config: dict, max_text_tokens: int = DEFAULT_T5_TOKENS,
                 uncond_mode: str = "empty_prompt"):
        super().__init__(components, uncond_mode=uncond_mode)
        self.schedule = FlowSchedule(num_train_timesteps=components.scheduler_config.get("num_train_timesteps", 1000))
        # the teacher's sampling shift (SD3-Medium 3.0); students may use their own (student.flow_shift)
        self.flow_shift = float(components.scheduler_config.get("shift", 1.0))
        self.max_text_tokens = max_text_tokens
        self.latent_channels = components.denoiser.config.in_channels
        self.vae_scale_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)

    @classmethod
    def load(cls, model_cfg, *, device="cpu", dtype=torch.float32, with_text_encoders=True, with_vae=True):
        source = resolve_pipeline(model_cfg, cls.name)
        source.require("vae")
        components, vae_config = load_components(
            source, model_cfg, denoiser=cls.denoiser_subfolder, text_pairs=cls.text_components,
            optional_text=("text_encoder_3",), device=device, dtype=dtype,
            with_text_encoders=with_text_encoders, with_vae=with_vae)
        return cls(components, vae_config=vae_config,
                   max_text_tokens=getattr(model_cfg, "max_text_tokens", None) or DEFAULT_T5_TOKENS)

    @classmethod
    def token_limits(cls, model_cfg):
        limit = getattr(model_cfg, "max_text_tokens", None) or DEFAULT_T5_TOKENS
        return [("tokenizer", None), ("tokenizer_2", None), ("tokenizer_3", limit)]

    # ---- conditioning ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        tokenizers, encoders = self._text_encoders()
        clip_states, pooled = [], []
        for tokenizer, encoder in zip(tokenizers[:2], encoders[:2]):
            ids = tokenize(tokenizer, prompts, tokenizer.model_max_length).input_ids.to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            clip_states.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        clip = torch.cat(clip_states, dim=-1)
        t5 = self._t5_states(prompts, tokenizers[2], encoders[2], like=clip)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Cond(text=torch.cat([clip, t5.to(clip.dtype)], dim=-2), pooled=torch.cat(pooled, dim=-1))

    def _t5_states(self, prompts, tokenizer, encoder, like: torch.Tensor) -> torch.Tensor:
        if encoder is None:  # SD3 shipped without T5 (or dropped to save memory): the pipeline feeds zeros
            width = self.denoiser.config.joint_attention_dim
            return like.new_zeros(len(prompts), self.max_text_tokens, width)
        ids = tokenize(tokenizer, prompts, self.max_text_tokens).input_ids.to(encoder.device)
        return encoder(ids).last_hidden_state.to(like.device)

    def placeholder_cond(self, batch, device="cpu", dtype=torch.float32):
        config = self.denoiser.config
        tokens = self.clip_tokens + self.max_text_tokens  # CLIP states, then T5's, on the sequence axis
        return Cond(text=torch.zeros(batch, tokens, config.joint_attention_dim, device=device, dtype=dtype),
                    pooled=torch.zeros(batch, config.pooled_projection_dim, device=device, dtype=dtype))

    # ---- denoiser -------------------------------------------------------------------------------
    def forward(self, net, x_t, t, cond):
        dtype = module_dtype(net)
        timestep = self.schedule.model_timestep(t).to(x_t.device)
        return net(hidden_states=x_t.to(dtype), timestep=timestep,
                   encoder_hidden_states=cond["text"].to(x_t.device, dtype),
                   pooled_projections=cond["pooled"].to(x_t.device, dtype), return_dict=False)[0]

    def bottleneck(self, net):
        """The last block of the first half: an MMDiT never downsamples, so the middle of its depth stands in."""
        blocks = net.transformer_blocks
        return blocks[max(len(blocks) // 2 - 1, 0)]

    def bottleneck_map(self, output):
        """A joint block returns (text tokens, image tokens): the image tokens as a map."""
        return token_map(output[1])
    def pipeline_arguments(self):
        return {"guidance_scale": 1.0, "max_sequence_length": self.max_text_tokens}

    # ---- students -------------------------------------------------------------------------------
    def student_times(self, n_steps, override=None, *, shift=None):
        """Shifted flow times (DMDR: shift 3 for SD3-Medium, 5 for SD3.5-Large); default shift: the scheduler's."""
        if override is not None:
            return explicit_times(override, n_steps)
        return shifted_flow_times(n_steps, self.flow_shift if shift is None else shift)

    # ---- images ---------------------------------------------------------------------------------
    def decode(self, latents, vae=None):
        return decode_latents(self._vae(vae), latents)

    def encode_images(self, images):
        return encode_images(self._vae(), images)
