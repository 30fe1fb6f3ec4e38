"""CLIP image preprocessing as tensor ops, so reward gradients reach the generator's pixels.

The reference pipelines (open_clip's `image_transform`, transformers' `CLIPImageProcessor`) go through
PIL and cut the graph. This module does the same steps on a float tensor: resize the shortest side to
the model's input size (bicubic with antialias, as PIL's resampling filters do), centre crop, normalise.
PIL resamples uint8 images, so its results differ from these by a few 1/255 steps; tests/rewards
states the tolerance.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

# OpenAI CLIP's normalisation (Radford et al. 2021, github.com/openai/CLIP clip/clip.py); open_clip
# (OPENAI_DATASET_MEAN/STD), HPSv2, PickScore's laion processor and the LAION aesthetic predictor reuse it.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ResizeMode = Literal["shortest", "squash"]


def resize_for_clip(images: torch.Tensor, size: int, resize_mode: ResizeMode = "shortest",
                    interpolation: str = "bicubic") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size).

    shortest: shortest side to `size`, then centre crop (OpenAI CLIP, open_clip default, HF processors);
    squash: both sides to `size` (open_clip's DFN5B configs). Identical for square images.
    """
    height, width = images.shape[-2:]
    if resize_mode == "squash":
        target = (size, size)
    elif resize_mode == "shortest":
        # torchvision/HF rule: the short side becomes `size`, the long side int(size * long / short).
        if height <= width:
            target = (size, int(size * width / height))
        else:
            target = (int(size * height / width), size)
    else:
        raise ValueError(f"resize_mode must be 'shortest' or 'squash', not {resize_mode!r}")
    if (height, width) != target:
        images = F.interpolate(images, size=target, mode=interpolation, antialias=True, align_corners=False)
        # PIL resamples into uint8 and so clips bicubic overshoot; clip here too so scores match it.
        images = images.clamp(0.0, 1.0)
    return center_crop(images, size)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {height}x{width} image")
    # torchvision's rounding (open_clip's pipelines); HF's PIL processor floors instead: at most 1 px apart.
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def normalize(images: torch.Tensor, mean: Sequence[float] = OPENAI_CLIP_MEAN,
              std: Sequence[float] = OPENAI_CLIP_STD) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                    std: Sequence[float] = OPENAI_CLIP_STD, resize_mode: ResizeMode = "shortest",
                    interpolation: str = "bicubic") -> torch.Tensor:
    """Images in [0, 1], (B, 3, H, W) float -> normalised CLIP input (B, 3, size, size), differentiable."""
    return normalize(resize_for_clip(images, size, resize_mode, interpolation), mean, std)
