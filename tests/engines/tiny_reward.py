"""A tiny differentiable reward for RL tests: how red the image is (mean of R minus mean of G and B)."""

import torch


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    r, g, b = images.unbind(dim=1)
    return (r - 0.5 * (g + b)).mean(dim=(1, 2))
