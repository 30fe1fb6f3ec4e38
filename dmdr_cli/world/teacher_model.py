"""The world teacher's networks and how they are saved: a StableDiffusionPipeline folder without a VAE.

The UNet denoises [-1, 1] RGB images directly (pixel space: 3 channels, the world's resolution), so
`load_family` with family "sd" loads it through exactly the code that loads real SD checkpoints.

Schedule: eps prediction on SD's scaled-linear betas (0.00085 .. 0.012 over 1000 steps). An eps model's
x0 estimate is (x_t - s eps) / a, and a at t = 999 sets how far an eps error is blown up there. DDPM's
pixel-space linear betas (1e-4 .. 0.02) leave a = 0.0064: an eps error of 0.05 becomes an x0 error of
8, and unclipped DDIM carries it to the last step (a 400-step teacher trained so ended with x0 values
of +-15: noise, not shapes), CFG multiplies it, and DMD's x0-space scores and a 1-step eps student fed
pure noise at t = 0.999 would inherit it. Scaled-linear betas leave a = 0.068, ten times better
conditioned, as for SD and its DMD2 students. The price is the one SD pays: 7% of the signal at
t = 999 that sampling from pure noise lacks; here every image shares the dark background, so that
signal is mostly the prior anyway. Linear betas stay a recipe choice (world.teacher.beta_schedule).
Sampling uses DDIM with "trailing" spacing (the first step at t = 999) and no x0 clipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from .teacher_text import world_text_encoder, world_tokenizer

TRAIN_TIMESTEPS = 1000
BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def scheduler_config(beta_schedule: str) -> dict:
    """The DDIMScheduler config saved with the teacher (and read back by the sd family)."""
    beta_start, beta_end = BETAS[beta_schedule]
    return dict(
        num_train_timesteps=TRAIN_TIMESTEPS, beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule,
        prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1, clip_sample=False,
        set_alpha_to_one=True,
    )


def alphas_cumprod(beta_schedule: str) -> torch.Tensor:
    """alpha-bar per training timestep, as every diffusers scheduler computes it from this config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config(beta_schedule)).alphas_cumprod.clone()


def build_unet(resolution: int, channels: list[int], layers_per_block: int, attention_heads: int,
               cross_attention_dim: int, seed: int):
    """A pixel-space UNet2DConditionModel: plain ResNets at full resolution (the costliest level: no
    attention there), cross-attention to the prompt at every coarser level."""
    from diffusers import UNet2DConditionModel

    levels = len(channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
            layers_per_block=layers_per_block, norm_num_groups=8, attention_head_dim=attention_heads,
            cross_attention_dim=cross_attention_dim,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        )


def build_teacher(cfg, resolution: int):
    """(unet, text_encoder, tokenizer) freshly initialised from the recipe's `world.teacher` section."""
    tokenizer = world_tokenizer(cfg.max_tokens)
    text_encoder = world_text_encoder(tokenizer, cfg.text_width, cfg.text_layers, cfg.text_heads, seed=cfg.seed)
    unet = build_unet(resolution, cfg.channels, cfg.layers_per_block, cfg.attention_heads, cfg.text_width,
                      seed=cfg.seed + 1)
    return unet, text_encoder, tokenizer


def save_pipeline(folder: Path, unet, text_encoder, tokenizer, beta_schedule: str, extra_files: dict[str, str]) -> None:
    """Write the teacher as a StableDiffusionPipeline folder (no VAE, no safety checker), replacing
    `folder` only once the new one is complete. `extra_files` (name -> text) are written next to it."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(scheduler_config(beta_schedule)), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    with _quiet_diffusers():  # "vae=None cannot be saved", shard-writing bars: noise in a training log
        pipeline.save_pretrained(partial, safe_serialization=True)
    for name, text in extra_files.items():
        (partial / name).write_text(text)
    previous = folder.with_name(f".{folder.name}.previous-{os.getpid()}")
    if folder.exists():
        os.rename(folder, previous)
    os.rename(partial, folder)
    shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(module, module.get_verbosity()) for module in (diffusers_logging, transformers_logging)]
    for module, _ in saved:
        module.set_verbosity_error()
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, verbosity in saved:
            module.set_verbosity(verbosity)
            module.enable_progress_bar()
