"""Model-family adapters behind one interface (`Family`), looked up by the recipe's `model.family`.

Importing this package is cheap (torch only): the adapters import diffusers and transformers inside
their loading code, when a model is actually loaded, so `dmdr --help` stays instant.
"""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .base import Components, Cond, Family, Guidance
from .flux import FluxFamily
from .sd import SDFamily
from .sd3 import SD3Family
from .sdxl import SDXLFamily

FAMILIES: dict[str, type[Family]] = {"sd": SDFamily, "sdxl": SDXLFamily, "sd3": SD3Family, "flux": FluxFamily}

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def family_class(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise ModelLoadError(f"model.family: unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def default_dtype(recipe_dtype: str, device) -> torch.dtype:
    """The recipe's dtype on accelerators; CPU always computes in fp32 (model.dtype's documented rule)."""
    return torch.float32 if torch.device(device).type == "cpu" else _DTYPES[recipe_dtype]


def load_family(model_cfg, *, device="cpu", dtype: torch.dtype | None = None, with_text_encoders: bool = True,
                with_vae: bool = True, uncond_mode: str = "empty_prompt",
                guidance_values: tuple[float | None, float | None] = (None, None), denoiser_device=None) -> Family:
    """Load the teacher of `model_cfg` (recipe.model) with the adapter its `family` names.

    `dtype` None: `model_cfg.dtype` on accelerators, fp32 on CPU. `uncond_mode` is recipe.guidance.uncond;
    `guidance_values` are recipe student.embedded_guidance and guidance.fake_embedded_guidance
    (`guidance_values_of(recipe)`), for a denoiser that embeds guidance. `denoiser_device`: where the denoiser
    stays when it is not `device` (train.sharding full builds the networks on the CPU and shards them onto the
    GPU block by block: the whole teacher never sits on one GPU).
    """
    from .loading import place

    cls = family_class(model_cfg.family)
    if dtype is None:
        dtype = default_dtype(getattr(model_cfg, "dtype", "fp32"), device)
    family = cls.load(model_cfg, device=denoiser_device or device, dtype=dtype,
                      with_text_encoders=with_text_encoders, with_vae=with_vae)
    if denoiser_device is not None:
        for module in [family.components.vae, *family.components.text_encoders]:
            if module is not None:
                place(module, device)
    family.uncond_mode = uncond_mode
    family.use_guidance_values(*guidance_values)
    return family


def guidance_values_of(recipe) -> tuple[float | None, float | None]:
    """The (student, fake score) embedded guidance values a recipe sets (None: the family's defaults)."""
    return recipe.student.embedded_guidance, recipe.guidance.fake_embedded_guidance


__all__ = ["FAMILIES", "Components", "Cond", "Family", "FluxFamily", "Guidance", "SDFamily", "SDXLFamily", "SD3Family",
           "default_dtype", "family_class", "guidance_values_of", "load_family"]
