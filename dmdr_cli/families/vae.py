"""Between the denoiser's space and images in [0, 1], for latent (VAE) and pixel-space models.

Latent convention of the diffusers pipelines: the denoiser sees `(z - shift_factor) * scaling_factor`
where z is the VAE posterior (SD/SDXL have no shift; SD3 has one); decoding inverts it. The VAE's own
config gives the factors, so a replacement decoder (e.g. AutoencoderTiny / TAESD for ReFL) passed to
`decode` brings its own.
"""

from __future__ import annotations

import torch

from .loading import module_dtype


def _factors(vae) -> tuple[float, float]:
    config = vae.config
    return float(getattr(config, "scaling_factor", None) or 1.0), float(getattr(config, "shift_factor", None) or 0.0)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Denoiser latents -> images in [0, 1] (float32), differentiable w.r.t. `latents`."""
    scaling, shift = _factors(vae)
    z = latents / scaling + shift
    images = vae.decode(z.to(module_dtype(vae)), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)  # VaeImageProcessor.denormalize


def encode_images(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> denoiser latents from the posterior mean (deterministic)."""
    scaling, shift = _factors(vae)
    encoded = vae.encode((2 * images - 1).to(module_dtype(vae)))
    # AutoencoderKL returns a posterior; AutoencoderTiny returns the latents themselves
    z = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
    return (z.float() - shift) * scaling


def pixels_to_images(x: torch.Tensor) -> torch.Tensor:
    """Pixel-space models denoise images scaled to [-1, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def images_to_pixels(images: torch.Tensor) -> torch.Tensor:
    return 2 * images.float() - 1
