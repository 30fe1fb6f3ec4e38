"""open_clip models as rewards: building an architecture without downloads, loading its weights, and the
cosine reward that HPS and the CLIP score share.

open_clip's own `create_model(pretrained=...)` downloads on demand and reports a missing file as a
generic RuntimeError; here the architecture is built empty (`pretrained=None`) and the weights are
found by `weights.resolve_file`, so a missing file gets a one-line, actionable error.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ModelLoadError
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .similarity import ClipSimilarityReward
from .weights import load_into, load_state_dict, resolve_file

# What open_clip publishes on the hub, preferred first (open_clip.constants HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME).
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class ImageInput:
    """How an open_clip checkpoint expects its images (open_clip's per-tag preprocess config)."""

    size: int = 224
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"


def build_open_clip(arch: str, *, quick_gelu: bool = False) -> torch.nn.Module:
    """An open_clip architecture with random weights; nothing is downloaded."""
    import open_clip

    if open_clip.get_model_config(arch) is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelLoadError(f"open_clip has no architecture {arch!r}{hint}")
    # open_clip warns on the root logger that the model is random; the caller loads weights right after,
    # so that warning would only mislead users reading the log.
    root = logging.getLogger()
    root.addFilter(_drop_random_init_warning)
    try:
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu, pretrained_text=False)
    finally:
        root.removeFilter(_drop_random_init_warning)


def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    return "initialized randomly" not in record.getMessage()


def open_clip_tokenizer(arch: str) -> Tokenizer:
    import open_clip

    return open_clip.get_tokenizer(arch)


def image_input_of(visual: torch.nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> ImageInput:
    """The input an open_clip image tower expects: its own size, the tag's normalisation and resize mode."""
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    cfg = pretrained_cfg or {}
    return ImageInput(size=int(size), mean=tuple(cfg.get("mean", OPENAI_CLIP_MEAN)),
                      std=tuple(cfg.get("std", OPENAI_CLIP_STD)), resize_mode=cfg.get("resize_mode", "shortest"),
                      interpolation=cfg.get("interpolation", "bicubic"))


def load_open_clip(arch: str, *, tag: str | None, path: str | None, setting: str) -> tuple[torch.nn.Module, ImageInput]:
    """Build `arch` and load its weights from `path` (file, folder or hub id) or, when None, from the
    hub repo open_clip lists for the pretrained `tag`; the tag also gives QuickGELU and preprocessing.
    `setting` is the recipe key that takes `path`, for error messages."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag and not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ModelLoadError(f"open_clip knows no pretrained tag {tag!r} for {arch} (known: {known}); or pass a "
                             f"weights file as {setting}")
    names, default_repo = _hub_location(cfg)
    get_it = f"the Hugging Face repo {default_repo}" if default_repo else (cfg.get("url") or "its publisher")
    file = resolve_file(path, names, default_repo=default_repo, get_it=get_it, setting=setting)
    state = load_state_dict(file)  # an unreadable file fails before the model is built
    model = build_open_clip(arch, quick_gelu=bool(cfg.get("quick_gelu", False)))
    load_into(model, state, file, f"open_clip {arch}")
    return model, image_input_of(model.visual, cfg)


def _hub_location(cfg: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    """open_clip writes hub sources as 'org/repo/' (default file names) or 'org/repo/file'."""
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        return OPEN_CLIP_WEIGHT_FILES, None
    org, name, filename = (hub.split("/", 2) + [""])[:3]
    return ((filename,) if filename else OPEN_CLIP_WEIGHT_FILES), f"{org}/{name}"


class OpenClipCosineReward(ClipSimilarityReward):
    """Cosine of an open_clip model's normalised image and text embeddings."""

    name = "open_clip"
    units = "cosine"

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, image_input: ImageInput | None = None,
                 source: str = "in-memory model"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        spec = image_input or image_input_of(model.visual)
        self.input_size, self.image_mean, self.image_std = spec.size, spec.mean, spec.std
        self.resize_mode, self.interpolation = spec.resize_mode, spec.interpolation
        self.source = source
        self.freeze()

    @classmethod
    def from_modules(cls, model: torch.nn.Module, tokenizer: Tokenizer, image_input: ImageInput | None = None):
        """Wrap an already built open_clip model (tests build tiny random ones)."""
        return cls(model, tokenizer, image_input)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(tokens)

    def set_gradient_checkpointing(self, enabled: bool = True) -> bool:
        self.model.visual.set_grad_checkpointing(enabled)  # only the image tower carries gradients
        return True
