"""PixelDiffusionPipeline: text-to-image for a pixel-space UNet (no VAE), such as dmdr's built-in shapes world.

dmdr copies this file into exports of pixel-space models; diffusers loads it as the folder's own pipeline code:

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)                 # a complete folder
    DiffusionPipeline.from_pretrained(base, custom_pipeline=f"{folder}/pixel_pipeline.py",
                                      trust_remote_code=True)                         # the base model's folder

It is StableDiffusionPipeline without the VAE: prompts encoded the same way (the CLIP encoder's last hidden
states, "" or the negative prompt for classifier-free guidance), the same scheduler loop, and the denoised
tensor is the image itself in [-1, 1]. It imports only torch, numpy and diffusers.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor


class PixelDiffusionPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]

    @torch.no_grad()
    def __call__(self, prompt, height: int | None = None, width: int | None = None, num_inference_steps: int = 4,
                 timesteps: list[int] | None = None, guidance_scale: float = 1.0, negative_prompt=None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        size = self.unet.config.sample_size
        height, width = height or size, width or size
        embeds = self.encode_prompt(prompts)
        guided = guidance_scale > 1.0
        if guided:
            negative = negative_prompt if negative_prompt is not None else ""
            negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
            embeds = torch.cat([self.encode_prompt(negative), embeds])

        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=self.device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        shape = (len(prompts), self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=embeds.dtype)
        latents = latents.to(self.device) * self.scheduler.init_noise_sigma
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters \
            else {}

        for t in self.progress_bar(self.scheduler.timesteps):
            x = torch.cat([latents] * 2) if guided else latents
            x = self.scheduler.scale_model_input(x, t)
            pred = self.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
            if guided:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]

        images = latents
        if output_type != "latent":
            images = (latents.float() / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
