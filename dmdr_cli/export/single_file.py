"""Single-file checkpoints: the whole pipeline (denoiser, text encoders, VAE) in one .safetensors with the
original key layout, as AUTOMATIC1111 / Forge, ComfyUI's Load Checkpoint and diffusers' `from_single_file`
read it; or the denoiser alone in that layout (`--denoiser-only`: ComfyUI's Load Diffusion Model).

A family takes part by registering a `SingleFileLayout` in `LAYOUTS` (FLUX: its transformer's BFL layout,
components=()): the engine and the model card never branch on a family name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DmdrError
from .flux_bfl import to_bfl
from .original_keys import Converter, clip, ldm_unet, ldm_vae, open_clip, sd3_mmdit, t5


@dataclass(frozen=True)
class SingleFileLayout:
    denoiser: Converter  # the student's denoiser state dict + config -> its original keys, prefix included
    components: tuple[tuple[str, Converter], ...]  # (pipeline component, converter), in the file's order
    optional: tuple[str, ...] = ()  # components a base model may lack (SD3 without T5); others must be there
    description: str = ""  # what the file holds, for the model card
    # components diffusers' `from_single_file` leaves in training mode (0.42 builds T5 without .eval(): its
    # dropout would perturb every prompt), which the model card puts in eval mode
    left_training: tuple[str, ...] = ()


LAYOUTS: dict[str, SingleFileLayout] = {
    "sd": SingleFileLayout(ldm_unet, (("text_encoder", clip("cond_stage_model.transformer.")), ("vae", ldm_vae)),
                           description="SD1.x layout: model.diffusion_model, cond_stage_model, first_stage_model"),
    "sdxl": SingleFileLayout(ldm_unet, (("text_encoder", clip("conditioner.embedders.0.transformer.")),
                                        ("text_encoder_2", open_clip("conditioner.embedders.1.model.")),
                                        ("vae", ldm_vae)),
                             description="SDXL layout: model.diffusion_model, conditioner.embedders.0 / 1, "
                                         "first_stage_model"),
    "sd3": SingleFileLayout(sd3_mmdit, (("text_encoder", clip("text_encoders.clip_l.transformer.",
                                                              projection_unused=True)),
                                        ("text_encoder_2", clip("text_encoders.clip_g.transformer.")),
                                        ("text_encoder_3", t5("text_encoders.t5xxl.transformer.")),
                                        ("vae", ldm_vae)),
                            optional=("text_encoder_3",), left_training=("text_encoder_3",),
                            description="SD3 layout: model.diffusion_model, text_encoders.clip_l / clip_g / t5xxl, "
                                        "first_stage_model"),
    # FLUX.1 ships its transformer alone, in Black Forest Labs' layout (flux1-dev.safetensors: double_blocks.N...,
    # no prefix), which ComfyUI's Load Diffusion Model and diffusers' FluxTransformer2DModel.from_single_file read;
    # a layout without components is always the denoiser alone
    "flux": SingleFileLayout(lambda state, config: to_bfl(state), (),
                             description="FLUX.1 transformer in the BFL layout: double_blocks / single_blocks"),
}

WORKING_FORMATS_WITHOUT_VAE = ("--format diffusers (a folder with its own pixel-space pipeline) or safetensors "
                               "(LoRAs: lora too)")


def layout_for(family: str) -> SingleFileLayout:
    if family not in LAYOUTS:
        raise DmdrError(f"single-file checkpoints cover the {', '.join(LAYOUTS)} families, not {family}: use "
                        f"--format diffusers or safetensors")
    return LAYOUTS[family]


def check_latent(model_cfg) -> None:
    """Refuse a pixel-space base model (no VAE) for the formats of latent-diffusion tools (ComfyUI, A1111)."""
    from ..families.loading import resolve_pipeline

    if not resolve_pipeline(model_cfg, model_cfg.family).has("vae"):
        raise DmdrError(f"{model_cfg.pretrained} is a pixel-space model (no VAE): single-file checkpoints and "
                        f"ComfyUI hold latent-diffusion models; use {WORKING_FORMATS_WITHOUT_VAE}")


def check_single_file(model_cfg, *, denoiser_only: bool) -> None:
    """Refuse, before anything loads, a base model the family's single-file layout cannot hold."""
    from ..families.loading import resolve_pipeline

    layout = layout_for(model_cfg.family)
    check_latent(model_cfg)
    source = resolve_pipeline(model_cfg, model_cfg.family)
    if denoiser_only:
        return
    for name, _ in layout.components:
        if name not in layout.optional:
            source.require(name)


def components_in_file(model_cfg) -> list[str]:
    """The base model's components a full single-file checkpoint of it holds, besides the denoiser."""
    from ..families.loading import resolve_pipeline

    layout = layout_for(model_cfg.family)
    source = resolve_pipeline(model_cfg, model_cfg.family)
    return [name for name, _ in layout.components if name not in layout.optional or source.has(name)]


def denoiser_alone(family: str, denoiser_only: bool) -> bool:
    """Whether a single-file export of `family` holds the denoiser alone: asked for, or all its layout has."""
    return denoiser_only or not layout_for(family).components


def file_name(student, denoiser_only: bool) -> str:
    """`sdxl_4step_dmdr.safetensors` / `sdxl_4step_dmdr_unet.safetensors`, as few-step releases name theirs."""
    stem = f"{student.family.name}_{len(student.times)}step_dmdr"
    return f"{stem}_{student.family.denoiser_subfolder}.safetensors" if denoiser_only else f"{stem}.safetensors"


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in `dtype`; tensors sharing memory (T5's tied embeddings) become copies, which safetensors
    requires."""
    out, seen = {}, set()
    for key, value in tensors.items():
        value = value.detach().to(dtype) if value.is_floating_point() else value.detach()
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset())
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out


def single_file_tensors(student, dtype: torch.dtype, *, denoiser_only: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: the student's denoiser, and (unless `denoiser_only`) the base model's other
    components, each loaded in `dtype`, converted and released before the next."""
    from ..families.loading import resolve_pipeline

    model = student.source.recipe.model
    layout = layout_for(model.family)
    net = student.denoiser
    tensors = _cast(layout.denoiser(net.state_dict(), dict(net.config)), dtype)
    if denoiser_only:
        return tensors
    source = resolve_pipeline(model, model.family)
    present = components_in_file(model)
    for name, convert in layout.components:
        if name not in present:
            continue
        module = source.load(name, dtype=dtype)
        config = dict(module.config) if isinstance(getattr(module, "config", None), dict) else {}
        tensors.update(_cast(convert(module.state_dict(), config), dtype))
        del module
    return tensors
