"""CLIP image preprocessing as tensor ops, so reward gradients reach the generator's pixels.

The reference pipelines (open_clip's `image_transform`, transformers' `CLIPImageProcessor`, the HPSv2
repository's transform) go through PIL and cut the graph. This module does the same steps on a float
tensor: resize (bicubic with antialias, as PIL's resampling filters do), centre crop or pad, normalise.
PIL resamples uint8 images, so its results differ from these by a few 1/255 steps; tests/rewards
states the tolerance. The geometry is exact: which side is resized, the crop offset's rounding and the
padding follow each reference, because on non-square images (SDXL's 832x1216) they move the score.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

# OpenAI CLIP's normalisation (Radford et al. 2021, github.com/openai/CLIP clip/clip.py); open_clip
# (OPENAI_DATASET_MEAN/STD), HPSv2, PickScore's laion processor and the LAION aesthetic predictor reuse it.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ResizeMode = Literal["shortest", "squash", "longest"]
# How a centre crop's offset is rounded: torchvision's CenterCrop (open_clip) rounds half to even,
# transformers' CLIP processors floor ((H - 224) // 2 in the PIL backend, int((H - 224) / 2) in the
# torchvision one).
CropOffset = Literal["round", "floor"]


def resize_for_clip(images: torch.Tensor, size: int, resize_mode: ResizeMode = "shortest",
                    interpolation: str = "bicubic", crop_offset: CropOffset = "round") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size).

    shortest: shortest side to `size`, then centre crop (OpenAI CLIP, open_clip default, HF processors);
    squash: both sides to `size` (open_clip's DFN5B configs);
    longest: longest side to `size`, then pad to a square with black (HPSv2's transform).
    All three are identical for square images.
    """
    height, width = images.shape[-2:]
    if resize_mode == "longest":
        return _resize_longest_and_pad(images, size, interpolation)
    if resize_mode == "squash":
        target = (size, size)
    elif resize_mode == "shortest":
        # torchvision/HF rule: the short side becomes `size`, the long side int(size * long / short).
        if height <= width:
            target = (size, int(size * width / height))
        else:
            target = (int(size * height / width), size)
    else:
        raise ValueError(f"resize_mode must be 'shortest', 'squash' or 'longest', not {resize_mode!r}")
    if (height, width) != target:
        images = F.interpolate(images, size=target, mode=interpolation, antialias=True, align_corners=False)
        # PIL resamples into uint8 and so clips bicubic overshoot; clip here too so scores match it.
        images = images.clamp(0.0, 1.0)
    return center_crop(images, size, crop_offset)


def center_crop(images: torch.Tensor, size: int, offset: CropOffset = "round") -> torch.Tensor:
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {height}x{width} image")
    if offset == "floor":
        top, left = (height - size) // 2, (width - size) // 2
    elif offset == "round":
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    else:
        raise ValueError(f"crop offset must be 'round' or 'floor', not {offset!r}")
    return images[..., top:top + size, left:left + size]


def _resize_longest_and_pad(images: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """HPSv2's `ResizeMaxSize(size, fill=0)` (tgxs002/HPSv2, hpsv2/src/open_clip/transform.py), applied
    as HPSv2 applies it, to the float tensor after ToTensor: scale = size / longest side, each side
    round(side * scale) with Python's round, bicubic with antialias (torchvision's tensor resize, which
    does not clip the overshoot), then zeros (black, before normalisation) padded floor(pad / 2) on the
    left / top and the rest on the right / bottom. HPSv2 skips the padding when the longest side is
    already `size`, which leaves a non-square input its model cannot take; here that image is padded too."""
    height, width = images.shape[-2:]
    scale = size / float(max(height, width))
    target = (round(height * scale), round(width * scale))
    if target != (height, width):
        images = F.interpolate(images, size=target, mode=interpolation, antialias=True, align_corners=False)
    pad_h, pad_w = size - target[0], size - target[1]
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return images


def normalize(images: torch.Tensor, mean: Sequence[float] = OPENAI_CLIP_MEAN,
              std: Sequence[float] = OPENAI_CLIP_STD) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                    std: Sequence[float] = OPENAI_CLIP_STD, resize_mode: ResizeMode = "shortest",
                    interpolation: str = "bicubic", crop_offset: CropOffset = "round") -> torch.Tensor:
    """Images in [0, 1], (B, 3, H, W) float -> normalised CLIP input (B, 3, size, size), differentiable."""
    return normalize(resize_for_clip(images, size, resize_mode, interpolation, crop_offset), mean, std)
