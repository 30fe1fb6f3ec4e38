"""Fixtures for the family tests: the tiny folders by variant, and families loaded once per session."""

import pytest

from family_helpers import load


@pytest.fixture(scope="session")
def folders(tiny_sd, tiny_sd_pixel, tiny_sdxl, tiny_sd3, tiny_sd3_no_t5, tiny_flux, tiny_flux_schnell):
    return {"sd": tiny_sd, "sd-pixel": tiny_sd_pixel, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "sd3-no-t5": tiny_sd3_no_t5,
            "flux": tiny_flux, "flux-schnell": tiny_flux_schnell}


@pytest.fixture(scope="session")
def loaded(folders):
    """Families loaded once per session, by variant name; tests must not mutate them."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            cache[variant] = load(variant.split("-")[0], folders[variant])
        return cache[variant]

    return get
