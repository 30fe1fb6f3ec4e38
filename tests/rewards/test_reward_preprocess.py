"""Tensor-op CLIP preprocessing against the PIL pipelines of open_clip and transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmdr_cli.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

# PIL resamples in two uint8 passes (clipping and rounding in between) while torch resamples in float,
# so on a smooth image the two agree to about one 8-bit level: 1/255 in [0, 1] is 1/255/0.2613 = 0.015
# after normalisation by the smallest std. Measured: max 0.0157, mean 0.0044. Allowed: 2 levels max,
# half a level on average. (Pure per-pixel noise upscaled differs more, by overshoot clipping.)
MAX_TOL = 2 / 255 / min(OPENAI_CLIP_STD)
MEAN_TOL = 0.5 / 255 / min(OPENAI_CLIP_STD)


def smooth_random_uint8(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, height // 16 + 1, width // 16 + 1, generator=g)
    image = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    image = image + 0.05 * torch.rand(1, 3, height, width, generator=g)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("height,width", [(300, 400), (1024, 768), (512, 512), (200, 180)])
def test_matches_open_clip_and_transformers_pil_processors(height, width):
    import open_clip
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_u8 = smooth_random_uint8(height, width, seed=height + width)
    pil = Image.fromarray(image_u8[0].permute(1, 2, 0).numpy())
    ours = clip_preprocess(image_u8.float() / 255)

    reference_open_clip = open_clip.image_transform(224, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    reference_hf = CLIPImageProcessorPil()  # CLIP defaults: shortest edge 224, bicubic, crop 224, OpenAI mean/std
    for reference in (reference_open_clip(pil)[None],
                      torch.from_numpy(reference_hf(pil, return_tensors="np")["pixel_values"])):
        assert reference.shape == ours.shape == (1, 3, 224, 224)
        diff = (ours - reference).abs()
        assert diff.max() < MAX_TOL and diff.mean() < MEAN_TOL, (diff.max().item(), diff.mean().item())


def test_is_differentiable_and_keeps_the_batch():
    images = torch.rand(3, 3, 64, 80, requires_grad=True)
    out = clip_preprocess(images, size=32)
    assert out.shape == (3, 3, 32, 32)
    out.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_squash_resizes_without_cropping():
    images = torch.zeros(1, 3, 20, 40)
    images[..., :, :10] = 1.0  # a bright left quarter survives squashing but is cropped away by "shortest"
    squashed = clip_preprocess(images, size=16, resize_mode="squash", mean=(0, 0, 0), std=(1, 1, 1))
    cropped = clip_preprocess(images, size=16, resize_mode="shortest", mean=(0, 0, 0), std=(1, 1, 1))
    assert squashed[..., :, 0].mean() > 0.9
    assert cropped[..., :, 0].mean() < 0.1


def test_square_input_at_size_is_only_normalised():
    images = torch.rand(1, 3, 224, 224)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip_preprocess(images), (images - mean) / std)
