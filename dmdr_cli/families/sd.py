"""SD1.x / SD2.x: a UNet2DConditionModel on a DDPM schedule (eps or v prediction), one CLIP text encoder.

`UNetFamily` holds what SD and SDXL share: the discrete schedule from the model's own scheduler
config, DMD2's student timesteps, the UNet call, latents <-> images. A pipeline folder without a VAE
is a pixel-space model (the built-in miniature world): the UNet denoises [-1, 1] images directly.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import ModelLoadError
from .base import Cond, Family, explicit_times, tokenize
from .loading import load_components, module_dtype, resolve_pipeline
from .schedules import DiscreteSchedule, uniform_discrete_timesteps
from .vae import decode_latents, encode_images, images_to_pixels, pixels_to_images

# DMD2's LoRA targets for SDXL UNets (attention, transformer projections and ff, resnet convs, samplers,
# time embedding); the generator uses the same list.
UNET_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]


def discrete_schedule(scheduler_config: dict, prediction: str) -> DiscreteSchedule:
    """The training schedule a UNet was fitted with, from its scheduler config (betas, zero-SNR rescale).

    DDPMScheduler builds alphas_cumprod the way every diffusers scheduler does for these configs.
    """
    from diffusers import DDPMScheduler

    if prediction not in ("epsilon", "v_prediction"):
        raise ModelLoadError(f"the scheduler config says prediction_type {prediction!r}; dmdr's UNet families "
                             f"support epsilon and v_prediction: set model.prediction_type if the config is wrong")
    ddpm = DDPMScheduler.from_config({k: v for k, v in scheduler_config.items() if not k.startswith("_")})
    return DiscreteSchedule(ddpm.alphas_cumprod.clone(), prediction)


class UNetFamily(Family):
    """Shared by SD and SDXL: subclasses set the text components and build the conditioning."""

    denoiser_subfolder = "unet"
    default_sampler = "sde"
    generator_lora_targets = UNET_LORA_TARGETS
    guidance_lora_targets = UNET_LORA_TARGETS
    text_components: ClassVar[tuple[tuple[str, str], ...]]  # (tokenizer, text_encoder) subfolders

    def __init__(self, components, *, schedule: DiscreteSchedule, vae_config: dict | None, resolution: int,
                 uncond_mode: str = "empty_prompt"):
        super().__init__(components, uncond_mode=uncond_mode)
        self.schedule = schedule
        self.resolution = resolution
        self.pixel_space = vae_config is None
        self.latent_channels = components.denoiser.config.in_channels
        # as the pipelines compute it: one factor 2 per VAE down block after the first
        self.vae_scale_factor = 1 if self.pixel_space else 2 ** (len(vae_config["block_out_channels"]) - 1)

    @classmethod
    def load(cls, model_cfg, *, device="cpu", dtype=torch.float32, with_text_encoders=True, with_vae=True):
        source = resolve_pipeline(model_cfg, cls.name)
        components, vae_config = load_components(
            source, model_cfg, denoiser=cls.denoiser_subfolder, text_pairs=cls.text_components, device=device,
            dtype=dtype, with_text_encoders=with_text_encoders, with_vae=with_vae)
        override = getattr(model_cfg, "prediction_type", "auto")
        prediction = components.scheduler_config.get("prediction_type", "epsilon") if override == "auto" else override
        # the effective prediction type also drives the teacher's diffusers scheduler (sampling.teacher_sample)
        components.scheduler_config = {**components.scheduler_config, "prediction_type": prediction}
        return cls(components, schedule=discrete_schedule(components.scheduler_config, prediction),
                   vae_config=vae_config, resolution=model_cfg.resolution)

    def placeholder_cond(self, batch, device="cpu", dtype=torch.float32):
        width = self.denoiser.config.cross_attention_dim
        return Cond(text=torch.zeros(batch, self.clip_tokens, width, device=device, dtype=dtype))

    # ---- denoiser -------------------------------------------------------------------------------
    def _added_cond_kwargs(self, cond: Cond, device, dtype: torch.dtype) -> dict | None:
        """Extra UNet conditioning beyond the text states (SDXL: pooled embeds and time ids)."""
        return None

    def forward(self, net, x_t, t, cond):
        dtype = module_dtype(net)
        timestep = self.schedule.model_timestep(t).to(x_t.device)
        return net(x_t.to(dtype), timestep, encoder_hidden_states=cond["text"].to(x_t.device, dtype),
                   added_cond_kwargs=self._added_cond_kwargs(cond, x_t.device, dtype), return_dict=False)[0]

    def bottleneck(self, net):
        """The mid block, at the lowest resolution (DMD2's classifier reads its output)."""
        return net.mid_block

    # ---- students -------------------------------------------------------------------------------
    def student_times(self, n_steps, override=None, *, shift=None):
        """DMD2: [999, 749, 499, 249] / 1000 for 4 steps, [0.999] for 1 (SDXL 1-step recipes say [0.399]).

        `shift` is a flow-family setting: discrete timesteps have none.
        """
        if override is not None:
            return explicit_times(override, n_steps)
        n_train = self.schedule.num_train_timesteps
        return [self.schedule.time_of(step) for step in uniform_discrete_timesteps(n_steps, n_train)]

    # ---- images ---------------------------------------------------------------------------------
    def decode(self, latents, vae=None):
        if self.pixel_space:
            return pixels_to_images(latents)
        return decode_latents(self._vae(vae), latents)

    def encode_images(self, images):
        if self.pixel_space:
            return images_to_pixels(images)
        return encode_images(self._vae(), images)


class SDFamily(UNetFamily):
    """SD1.x / SD2.x (and pixel-space UNets of the same layout)."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    text_components = (("tokenizer", "text_encoder"),)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """The encoder's final (layer-normed) hidden states, as StableDiffusionPipeline without clip_skip."""
        (tokenizer,), (encoder,) = self._text_encoders()
        tokens = tokenize(tokenizer, prompts, tokenizer.model_max_length)
        device = encoder.device
        # SD2-style configs may ask for the padding mask; SD1 encoders attend to padding as in training
        mask = tokens.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
        text = encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return Cond(text=text)
