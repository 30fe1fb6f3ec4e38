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


# --- the official geometries on non-square images ----------------------------------------------------

def hps_reference(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """HPSv2's validation transform restated (tgxs002/HPSv2, hpsv2/src/open_clip/transform.py and
    factory.py): ToTensor, then ResizeMaxSize(size, fill=0) on that tensor, then Normalize."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    height, width = image.shape[-2:]
    scale = size / float(max(height, width))
    new_size = [round(height * scale), round(width * scale)]
    out = TF.resize(image, new_size, InterpolationMode.BICUBIC)
    pad_h, pad_w = size - new_size[0], size - new_size[1]
    out = TF.pad(out, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(out, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


# SDXL portrait and landscape, an odd pad, and 448x301 where Python's round (150.5 -> 150) matters.
@pytest.mark.parametrize("height,width", [(1216, 832), (832, 1216), (300, 500), (448, 301)])
def test_longest_mode_is_hpsv2s_resize_and_pad(height, width):
    image = smooth_random_uint8(height, width, seed=height * width).float() / 255
    ours = clip_preprocess(image, resize_mode="longest")
    torch.testing.assert_close(ours, hps_reference(image), atol=1e-5, rtol=0)
    # the whole picture is kept: the padding is black, i.e. -mean/std after normalisation
    black = (-torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD)).view(3, 1)
    edge = ours[0, :, :, 0] if height > width else ours[0, :, 0, :]
    torch.testing.assert_close(edge, black.expand_as(edge))


def test_hps_reward_uses_the_hpsv2_transform(tiny_open_clip, tiny_open_clip_arch):
    from dmdr_cli.rewards.hps import HPSReward
    from dmdr_cli.rewards.openclip import open_clip_tokenizer

    reward = HPSReward.from_modules(tiny_open_clip, open_clip_tokenizer(tiny_open_clip_arch))
    image = torch.rand(1, 3, 76, 52)
    torch.testing.assert_close(reward.preprocess(image), hps_reference(image, size=32), atol=1e-5, rtol=0)


# Short side already 32: no resampling, so the crop alone decides and the match is exact.
@pytest.mark.parametrize("height,width", [(35, 32), (32, 35), (32, 45), (39, 32)])
def test_pickscore_matches_the_transformers_clip_processors_crop(height, width, tiny_hf_clip, tiny_clip_tokenizer):
    """transformers floors the crop offset; torchvision's rounding would shift the crop by one pixel
    whenever the overhang is 3, 7, 11, ... pixels (35 - 32 = 3: floor 1, round 2)."""
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from PIL import Image

    from dmdr_cli.rewards.pickscore import PickScoreReward

    reward = PickScoreReward.from_modules(tiny_hf_clip, tiny_clip_tokenizer)
    g = torch.Generator().manual_seed(height * width)
    image_u8 = torch.randint(0, 256, (1, 3, height, width), generator=g, dtype=torch.uint8)
    ours = reward.preprocess(image_u8.float() / 255)
    settings = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pil = Image.fromarray(image_u8[0].permute(1, 2, 0).numpy())
    for processor in (CLIPImageProcessorPil(**settings), CLIPImageProcessor(**settings)):
        reference = torch.as_tensor(processor(pil, return_tensors="np")["pixel_values"])
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
