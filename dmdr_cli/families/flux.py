"""FLUX.1 (dev and schnell): a FluxTransformer2DModel trained with rectified flow, CLIP-L + T5-XXL.

What FluxPipeline does, and so this adapter:
- Conditioning: CLIP-L's pooled output (`pooler_output`) -> `pooled_projections`; T5's last hidden states
  (512 tokens for dev, 256 for schnell as its model card samples) -> `encoder_hidden_states`; text ids are
  zeros. Both encoders are released after the prompts are cached, as for SD3.
- Latents: 16 channels, `(z - shift_factor) * scaling_factor`. Everything downstream sees them unpacked
  (B, 16, H, W), so renoising and the DMD math are elementwise as for SD3; `forward` packs them 2x2 into
  (B, HW/4, 64) tokens with their image ids (row, column) and unpacks the output. Packing is a permutation,
  so the flow velocity is the same tensor in either layout.
- Time: sigma = t; the transformer is given timestep / 1000 = t (it multiplies by 1000 itself).
- Resolution-dependent shift: `calculate_shift` (256 -> 4096 image tokens, 0.5 -> 1.15) gives mu and the
  scheduler's exponential time shift is sigma' = e^mu s / (1 + (e^mu - 1) s), i.e. SD3's shift with shift =
  e^mu (dev: 1.88 at 512 px, 3.16 at 1024 px). Student times (unless student.flow_shift) and the renoise
  times of the DMD loss both go through it, so a 512 px and a 1024 px recipe mean the same thing.
  schnell's scheduler has no dynamic shifting (shift 1).
- Guidance: FLUX.1-dev is guidance-distilled: the guidance value enters through its guidance embedding, one
  forward pass, no CFG. `Guidance(w, uncond)` (the real score) becomes the embedded value w; the student and
  the fake score are given their own values (recipe student.embedded_guidance and
  guidance.fake_embedded_guidance), carried in the conditioning as `cond["guidance"]`. schnell has no
  guidance embedding: `Guidance` is plain CFG there, as for every other family.
"""

from __future__ import annotations

import math

import torch

from ..errors import ModelLoadError
from .base import Cond, Family, Guidance, explicit_times, token_map, tokenize
from .loading import load_components, module_dtype, resolve_pipeline
from .schedules import FlowSchedule, shift_flow_times, shifted_flow_times
from .vae import decode_latents, encode_images

# Every linear of a double block but its modulation, and a single block's fused input (q, k, v, MLP); the single
# blocks' `proj_out` is left out because its name also matches the final layer's. The guidance (fake-score) LoRA
# takes the attention projections only, as DMDR does for MMDiTs.
FLUX_ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
FLUX_GENERATOR_TARGETS = FLUX_ATTENTION_TARGETS + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                                   "ff_context.net.2", "proj_mlp"]

DEV_T5_TOKENS, SCHNELL_T5_TOKENS = 512, 256  # FluxPipeline's max_sequence_length; schnell's model card uses 256
DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default


def calculate_shift(image_tokens: int, config: dict) -> float:
    """mu of FluxPipeline's `calculate_shift`: linear in the image token count between the scheduler's bounds."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_tokens * slope + base_shift - slope * base_len


def resolution_shift(config: dict, image_tokens: int) -> float:
    """The SD3-style shift equal to the scheduler's time shift at this many image tokens."""
    if not config.get("use_dynamic_shifting", False):
        return float(config.get("shift", 1.0))
    mu = calculate_shift(image_tokens, config)
    # FlowMatchEulerDiscreteScheduler.time_shift: exponential e^mu / (e^mu + 1/s - 1); linear mu / (mu + 1/s - 1)
    return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, HW/4, 4C): 2x2 patches as FluxPipeline._pack_latents orders them."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of `height` x `width`."""
    b, _, d = tokens.shape
    return tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(
        b, d // 4, height, width)


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """(HW/4, 3) position ids of the packed tokens: (0, row, column), as FluxPipeline._prepare_latent_image_ids."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxFamily(Family):
    name = "flux"
    denoiser_subfolder = "transformer"
    pipeline_class = "FluxPipeline"
    default_sampler = "ode"
    generator_lora_targets = FLUX_GENERATOR_TARGETS
    guidance_lora_targets = FLUX_ATTENTION_TARGETS
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    zeroable_keys = ("text", "pooled")  # the guidance value is an input of the network, not of the prompt
    guidance_embedding_key = "guidance_embeds"
    default_sample_size = 128  # FluxPipeline.default_sample_size: 1024 px with FLUX.1's VAE

    @classmethod
    def default_teacher_guidance(cls, embeds_guidance, cfg):
        """FluxPipeline's defaults: dev embeds 3.5; schnell runs without guidance."""
        return DEFAULT_GUIDANCE if embeds_guidance else 1.0

    def __init__(self, components, *, vae_config: dict, resolution: int, max_text_tokens: int | None = None,
                 uncond_mode: str = "empty_prompt"):
        super().__init__(components, uncond_mode=uncond_mode)
        config = components.scheduler_config
        self.schedule = FlowSchedule(num_train_timesteps=config.get("num_train_timesteps", 1000))
        self.latent_channels = components.denoiser.config.in_channels // 4
        self.vae_scale_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
        self.embeds_guidance = bool(components.denoiser.config.get(self.guidance_embedding_key, False))
        self.student_guidance = self.fake_guidance = DEFAULT_GUIDANCE
        default_tokens = DEV_T5_TOKENS if self.embeds_guidance else SCHNELL_T5_TOKENS
        self.max_text_tokens = max_text_tokens or default_tokens
        self.resolution = resolution
        # the teacher's shift at the recipe's resolution, fixed at load: a student keeps the times it was trained at
        self.flow_shift = resolution_shift(config, self.image_tokens(resolution, resolution))

    @classmethod
    def load(cls, model_cfg, *, device="cpu", dtype=torch.float32, with_text_encoders=True, with_vae=True):
        source = resolve_pipeline(model_cfg, cls.name)
        source.require("vae")
        components, vae_config = load_components(
            source, model_cfg, denoiser=cls.denoiser_subfolder, text_pairs=cls.text_components, device=device,
            dtype=dtype, with_text_encoders=with_text_encoders, with_vae=with_vae)
        family = cls(components, vae_config=vae_config, resolution=model_cfg.resolution,
                     max_text_tokens=getattr(model_cfg, "max_text_tokens", None))
        family.latent_side(model_cfg.resolution, "model.resolution")
        return family

    # ---- geometry ---------------------------------------------------------------------------------
    def latent_side(self, pixels: int, what: str) -> int:
        """Latent size of `pixels`, refused unless the 2x2 packing divides it."""
        step = 2 * self.vae_scale_factor
        if pixels % step:
            raise ModelLoadError(f"{what} {pixels}: FLUX packs 2x2 latent patches, so sizes must be multiples of "
                                 f"{step} px for this VAE (16 for FLUX.1's)")
        return pixels // self.vae_scale_factor

    def image_tokens(self, height: int, width: int) -> int:
        return (height // self.vae_scale_factor // 2) * (width // self.vae_scale_factor // 2)

    def noise(self, batch, height, width, generator=None, device="cpu"):
        self.latent_side(height, "height")
        self.latent_side(width, "width")
        return super().noise(batch, height, width, generator=generator, device=device)

    # ---- conditioning -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        (clip_tok, t5_tok), (clip, t5) = self._text_encoders()
        ids = tokenize(clip_tok, prompts, clip_tok.model_max_length).input_ids.to(clip.device)
        pooled = clip(ids, output_hidden_states=False).pooler_output
        ids = tokenize(t5_tok, prompts, self.max_text_tokens).input_ids.to(t5.device)
        text = t5(ids, output_hidden_states=False)[0].to(pooled.device)
        cond = Cond(text=text, pooled=pooled)
        if self.embeds_guidance:  # what the student is told, unless a Guidance says otherwise
            cond["guidance"] = torch.full((len(prompts),), self.student_guidance, device=pooled.device)
        return cond

    def placeholder_cond(self, batch, device="cpu", dtype=torch.float32):
        """encode_prompts' shapes: T5 states (max_text_tokens x joint_attention_dim), CLIP-L pooled, and dev's
        guidance value (float32, as encode_prompts makes it)."""
        config = self.denoiser.config
        text = torch.zeros(batch, self.max_text_tokens, config.joint_attention_dim, device=device, dtype=dtype)
        cond = Cond(text=text, pooled=torch.zeros(batch, config.pooled_projection_dim, device=device, dtype=dtype))
        if self.embeds_guidance:
            cond["guidance"] = torch.full((batch,), self.student_guidance, device=device)
        return cond

    def use_guidance_values(self, student, fake):
        """dev: the student's value (None: 3.5, FluxPipeline's default) and the fake score's (None: the student's)."""
        if not self.embeds_guidance:
            super().use_guidance_values(student, fake)  # schnell: refused
        self.student_guidance = DEFAULT_GUIDANCE if student is None else float(student)
        self.fake_guidance = self.student_guidance if fake is None else float(fake)
        self._empty_prompt = None  # its guidance entry is the student's value

    def with_guidance_value(self, cond: Cond, value: float) -> Cond:
        """`cond` with the guidance embedding told `value` (dev); unchanged for a model without one (schnell)."""
        if not self.embeds_guidance:
            return cond
        return Cond({**cond, "guidance": torch.full_like(cond["guidance"], float(value))})

    def fake_score_cond(self, cond: Cond) -> Cond:
        return self.with_guidance_value(cond, self.fake_guidance)

    # ---- denoiser ---------------------------------------------------------------------------------
    def bottleneck(self, net):
        """The last double-stream block of the first half, as for SD3's MMDiT (a transformer never downsamples)."""
        blocks = net.transformer_blocks
        return blocks[max(len(blocks) // 2 - 1, 0)]

    def bottleneck_map(self, output):
        """A double-stream block returns (text tokens, image tokens); the image tokens are the packed 2x2
        patches, one per position of the half-resolution grid."""
        return token_map(output[1])

    def forward(self, net, x_t, t, cond):
        dtype = module_dtype(net)
        device = x_t.device
        _, _, h, w = x_t.shape
        guidance = cond["guidance"].to(device, torch.float32) if self.embeds_guidance else None
        text = cond["text"].to(device, dtype)
        # FluxPipeline passes timestep / 1000 (its timesteps are 1000 sigma); the transformer multiplies back
        timestep = (self.schedule.model_timestep(t) / 1000).to(device, dtype)
        out = net(hidden_states=pack(x_t.to(dtype)), timestep=timestep, guidance=guidance,
                  pooled_projections=cond["pooled"].to(device, dtype), encoder_hidden_states=text,
                  txt_ids=torch.zeros(text.shape[1], 3, device=device, dtype=dtype),
                  img_ids=image_ids(h, w, device, dtype), return_dict=False)[0]
        return unpack(out, h, w)

    def predict_x0(self, net, x_t, t, cond, guidance: Guidance | None = None):
        """Guidance-distilled (dev): the guidance value goes into the embedding, one pass; schnell: plain CFG."""
        if guidance is not None and self.embeds_guidance:
            return super().predict_x0(net, x_t, t, self.with_guidance_value(cond, guidance.scale))
        return super().predict_x0(net, x_t, t, cond, guidance)

    # ---- times ------------------------------------------------------------------------------------
    def student_times(self, n_steps, override=None, *, shift=None):
        """DMDR's flow times with the teacher's shift at model.resolution (or student.flow_shift when given)."""
        if override is not None:
            return explicit_times(override, n_steps)
        return shifted_flow_times(n_steps, self.flow_shift if shift is None else shift)

    def renoise_times(self, t: torch.Tensor) -> torch.Tensor:
        return shift_flow_times(t, self.flow_shift)

    def set_teacher_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        """FluxPipeline's schedule: sigmas linspace(1, 1/steps), shifted for this many image tokens."""
        import numpy as np

        _, _, h, w = latents.shape
        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift((h // 2) * (w // 2), scheduler.config)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=latents.device)

    def pipeline_arguments(self) -> dict:
        return {"guidance_scale": self.student_guidance if self.embeds_guidance else 1.0,
                "max_sequence_length": self.max_text_tokens}

    # ---- images -----------------------------------------------------------------------------------
    def decode(self, latents, vae=None):
        return decode_latents(self._vae(vae), latents)

    def encode_images(self, images):
        return encode_images(self._vae(), images)
