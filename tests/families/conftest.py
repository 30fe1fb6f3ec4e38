"""Shared helpers for the family tests: recipe model sections for the tiny folders, loaded families."""

import pytest

from dmdr_cli.recipe.schema import ModelSection

RESOLUTION = 16  # px; the tiny VAEs downsample by 2 -> 8x8 latents
T5_TOKENS = 8


def model_section(family: str, folder, **overrides) -> ModelSection:
    fields = dict(family=family, pretrained=str(folder), resolution=RESOLUTION, dtype="fp32")
    if family == "sd3":
        fields["max_text_tokens"] = T5_TOKENS
    return ModelSection(**{**fields, **overrides})


def load(family: str, folder, **kwargs):
    from dmdr_cli.families import load_family

    return load_family(model_section(family, folder), **kwargs)


@pytest.fixture(scope="session")
def folders(tiny_sd, tiny_sd_pixel, tiny_sdxl, tiny_sd3, tiny_sd3_no_t5):
    return {"sd": tiny_sd, "sd-pixel": tiny_sd_pixel, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "sd3-no-t5": tiny_sd3_no_t5}


@pytest.fixture(scope="session")
def loaded(folders):
    """Families loaded once per session, by variant name; tests must not mutate them."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            cache[variant] = load(variant.split("-")[0], folders[variant])
        return cache[variant]

    return get
