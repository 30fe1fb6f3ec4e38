"""The one call signature every reward model has: `reward(images, prompts) -> scores[B]`.

`images` is a float tensor in [0, 1] of shape (B, 3, H, W), straight from the decoder; preprocessing
is done with tensor ops (preprocess.py), so ReFL's gradient flows from the score back to the
generator. Scores come back as float32 in the reward's own `units`.

Every reward also says how its RL loss should treat it: `default_margin` is the hinge margin in those
units (a margin in the wrong units silently switches the loss off: ALGORITHM.md, "RL branch") and
`prompt_prefix` is the text its training loss prepends to prompts. `forward` never adds the prefix:
evaluation scores the prompt as given (EVAL.md, "Training rewards vs evaluation scores"), and
loss.py applies it for training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch

from ..errors import DmdrError
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess


class Reward(torch.nn.Module, ABC):
    """A frozen, differentiable score model. Subclasses implement `_score(images, prompts)`."""

    name: ClassVar[str] = "reward"
    units: str = ""
    default_margin: float | None = None
    prompt_prefix: str | None = None
    # CLIP-style input geometry; subclasses set these from their model's config.
    input_size: int = 224
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    crop_offset: str = "round"  # "floor" for rewards whose reference is a transformers processor
    source: str = "in-memory model"  # where the weights came from, for messages and reports

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = _as_prompt_list(prompts)
        _check_images(images, len(prompts))
        if next(self.parameters(), None) is not None:  # a parameter-free custom function runs where images are
            images = images.to(self.device)
        scores = self._score(images, prompts)
        _check_scores(scores, len(prompts), self.describe())
        return scores.float()

    @abstractmethod
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores of [0, 1] images on the reward's device, shape [B]; must keep the graph to `images`."""

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> normalised model input in the model's dtype (resizing itself runs in fp32)."""
        pixels = clip_preprocess(images.float(), self.input_size, self.image_mean, self.image_std,
                                 self.resize_mode, self.interpolation, self.crop_offset)
        return pixels.to(self.dtype)

    def describe(self) -> str:
        return f"reward {self.name!r} ({self.source})"

    # --- frozen-judge machinery -------------------------------------------------------------------

    def freeze(self) -> "Reward":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Reward":
        # A reward is a fixed judge: a trainer calling .train() on everything must not switch on
        # dropout (the aesthetic MLP has some) and change the scores.
        return super().train(False)

    def set_gradient_checkpointing(self, enabled: bool = True) -> bool:
        """Recompute the image tower's activations in backward; returns whether this reward supports it."""
        return False

    @property
    def device(self) -> torch.device:
        tensor = next(self.parameters(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        tensor = next((p for p in self.parameters() if p.is_floating_point()), None)
        return tensor.dtype if tensor is not None else torch.float32


def resolve_dtype(device: torch.device | str, dtype: torch.dtype | None = None) -> torch.dtype:
    """bf16 on GPU unless told otherwise; CPU always fp32 (bf16 matmuls there are slow and lossy)."""
    if torch.device(device).type == "cpu":
        return torch.float32
    return dtype or torch.bfloat16


def cosine(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (B, D) features, computed in fp32 whatever the model's dtype."""
    image_features = torch.nn.functional.normalize(image_features.float(), dim=-1)
    text_features = torch.nn.functional.normalize(text_features.float(), dim=-1)
    return (image_features * text_features).sum(dim=-1)


def _as_prompt_list(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, one per image, not a single string")
    return [str(p) for p in prompts]


def _check_images(images: torch.Tensor, batch: int) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        found = f"a {images.dtype} tensor" if isinstance(images, torch.Tensor) else f"a {type(images).__name__}"
        raise TypeError(f"images must be a float tensor in [0, 1], got {found}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] != batch:
        raise ValueError(f"{images.shape[0]} images but {batch} prompts: give one prompt per image")


def _check_scores(scores: object, batch: int, who: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise DmdrError(f"{who} returned a {type(scores).__name__}; expected a float tensor of shape [{batch}] "
                        "(one score per image)")
    if tuple(scores.shape) != (batch,) or not scores.is_floating_point():
        raise DmdrError(f"{who} returned a {scores.dtype} tensor of shape {list(scores.shape)}; expected a float "
                        f"tensor of shape [{batch}] (one score per image)")
