"""Test-wide settings: never touch the network, keep CPU threads predictable."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("DMDR_TEST", "1")
# The tiny test models gain nothing from intra-op threads, and on a busy 2-core machine a second thread
# makes each forward 10-100x slower (threads spin waiting for a busy core). Subprocesses inherit this.
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


# ---- tiny real-class pipelines (tests/fixtures/tiny_models.py), each built once per session ---------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


def _build_tiny(root, family, pixel_space=False):
    from fixtures.tiny_models import build_tiny  # imports diffusers: only when a test asks for a model

    return build_tiny(family, root, pixel_space=pixel_space)


@pytest.fixture(scope="session")
def tiny_sd(tiny_models_root):
    """Folder of a tiny StableDiffusionPipeline (latent, DDIM scheduler config)."""
    return _build_tiny(tiny_models_root, "sd")


@pytest.fixture(scope="session")
def tiny_sd_pixel(tiny_models_root):
    """Folder of a tiny pixel-space StableDiffusionPipeline (no VAE; the UNet sees 16x16 RGB)."""
    return _build_tiny(tiny_models_root, "sd", pixel_space=True)


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_models_root):
    """Folder of a tiny StableDiffusionXLPipeline (Euler scheduler config)."""
    return _build_tiny(tiny_models_root, "sdxl")


@pytest.fixture(scope="session")
def tiny_sd3(tiny_models_root):
    """Folder of a tiny StableDiffusion3Pipeline with T5 (FlowMatchEuler, shift 3)."""
    return _build_tiny(tiny_models_root, "sd3")


@pytest.fixture(scope="session")
def tiny_sd3_no_t5(tiny_models_root):
    """Folder of a tiny StableDiffusion3Pipeline saved without its T5 encoder."""
    return _build_tiny(tiny_models_root, "sd3-no-t5")


@pytest.fixture(scope="session")
def tiny_flux(tiny_models_root):
    """Folder of a tiny FluxPipeline like FLUX.1-dev: guidance embedding, dynamic shift (one double, one single block)."""
    return _build_tiny(tiny_models_root, "flux")


@pytest.fixture(scope="session")
def tiny_flux_schnell(tiny_models_root):
    """Folder of a tiny FluxPipeline like FLUX.1-schnell: no guidance embedding, shift 1."""
    return _build_tiny(tiny_models_root, "flux-schnell")
