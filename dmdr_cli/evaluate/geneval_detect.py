"""GenEval's detector path on transformers: Mask2Former instances and CLIP zero-shot colours.

GenEval (Ghosh et al. 2023, MIT) runs mmdet 2.x's Mask2Former Swin-S (COCO instance) and open_clip
ViT-L-14 (OpenAI weights). Here the detector is transformers' `Mask2FormerForUniversalSegmentation`
with a COCO-instance checkpoint, post-processed the way mmdet does it (top 100 (query, class) pairs,
score = class probability x mean mask probability inside the mask, masks upsampled bilinearly to the
input then to the image, boxes from the mask extents). Preprocessing follows the checkpoint's image
processor, not mmdet's pipeline, so numbers differ slightly from official GenEval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DmdrError
from .geneval_prompts import CLASSES, COCO_RENAMES, COLORS
from .geneval_score import SCORE_THRESHOLD, ColorClassifier, Detection

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
CLIP_ARCH = "ViT-L-14"
CLIP_HUB_REPO = "timm/vit_large_patch14_clip_224.openai"  # open_clip's copy of OpenAI's ViT-L/14
CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def geneval_labels(id2label: dict[Any, str]) -> list[str]:
    """GenEval class name per label id of a COCO-instance checkpoint; DmdrError for any other label set."""
    by_id = {int(k): v for k, v in id2label.items()}
    lowered = (by_id[i].strip().lower() for i in sorted(by_id))  # some configs write "TV"
    labels = [COCO_RENAMES.get(name, name) for name in lowered]
    if sorted(by_id) != list(range(len(CLASSES))) or sorted(labels) != sorted(CLASSES):
        unknown = [by_id[i] for i, name in zip(sorted(by_id), labels) if name not in CLASSES]
        raise DmdrError(f"the detector's {len(by_id)} labels are not COCO's 80 instance classes (unknown: "
                        f"{unknown[:5]}): use a COCO instance checkpoint such as {DEFAULT_DETECTOR}")
    return labels


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a non-empty mask, right/bottom exclusive (mmdet's mask2bbox convention)."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


class Mask2FormerDetector:
    """Image -> GenEval detections ({"class", "score", "box", "mask"}), best first."""

    def __init__(self, model: torch.nn.Module, processor: Any, device: str | torch.device = "cpu",
                 max_per_image: int = 100, min_score: float = SCORE_THRESHOLD, shortest_edge: int | None = None):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)
        self.labels = geneval_labels(model.config.id2label)
        self.max_per_image = max_per_image
        # A detection's score is at most its class probability, so pairs at or below the lowest GenEval
        # threshold never count; skipping them saves full-resolution masks.
        self.min_score = min_score
        # mmdet tests GenEval at 800 px on the short side; None keeps the checkpoint processor's size.
        self.resize = None if shortest_edge is None else {"shortest_edge": shortest_edge,
                                                          "longest_edge": max(1333, shortest_edge)}

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> list[Detection]:
        image = image.convert("RGB")
        resize = {} if self.resize is None else {"size": self.resize}
        inputs = self.processor(images=image, return_tensors="pt", **resize)
        pixel_values = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        pixel_mask = inputs.get("pixel_mask")
        outputs = self.model(pixel_values=pixel_values,
                             pixel_mask=None if pixel_mask is None else pixel_mask.to(self.device))
        if pixel_mask is None:
            valid_hw = tuple(pixel_values.shape[-2:])
        else:  # the processor pads bottom/right; the valid region is the unpadded resized image
            valid = pixel_mask[0].bool()
            valid_hw = (int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum()))
        return instances_from_logits(outputs.class_queries_logits[0].float(), outputs.masks_queries_logits[0].float(),
                                     self.labels, tuple(pixel_values.shape[-2:]), valid_hw,
                                     (image.height, image.width), self.max_per_image, self.min_score)


def instances_from_logits(class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: list[str],
                          input_hw: tuple[int, int], valid_hw: tuple[int, int], image_hw: tuple[int, int],
                          max_per_image: int = 100, min_score: float = 0.0) -> list[Detection]:
    """mmdet's Mask2Former instance post-processing for one image: class_logits (queries, classes + 1),
    mask_logits (queries, h, w) over the padded input of size input_hw whose top-left valid_hw is the
    resized image; masks come back at image_hw."""
    probs = class_logits.softmax(dim=-1)[:, :-1]  # the last column is "no object"
    n_classes = probs.shape[1]
    scores, flat = probs.flatten().topk(min(max_per_image, probs.numel()))
    keep = scores > min_score
    scores, flat = scores[keep], flat[keep]
    if not len(scores):
        return []
    queries, label_ids = flat // n_classes, flat % n_classes
    unique_queries, which = torch.unique(queries, return_inverse=True)
    logits = F.interpolate(mask_logits[unique_queries][None], size=input_hw, mode="bilinear", align_corners=False)
    logits = logits[..., : valid_hw[0], : valid_hw[1]]
    logits = F.interpolate(logits, size=image_hw, mode="bilinear", align_corners=False)[0]
    binary = logits > 0
    mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final = (scores * mask_scores[which]).tolist()
    masks, which, label_ids = binary.cpu().numpy(), which.tolist(), label_ids.tolist()
    detections = []
    for i in sorted(range(len(final)), key=lambda j: -final[j]):
        mask = masks[which[i]]
        if mask.any():
            detections.append({"class": labels[label_ids[i]], "score": final[i], "box": mask_box(mask), "mask": mask})
    return detections


def load_mask2former_detector(path: str | Path = DEFAULT_DETECTOR, device: str = "cpu",
                              shortest_edge: int | None = None) -> Mask2FormerDetector:
    """Load a local folder (or a hub id already in the local cache); never downloads."""
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    try:
        model = Mask2FormerForUniversalSegmentation.from_pretrained(str(path), local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except OSError as e:
        raise DmdrError(f"Mask2Former weights not found at {str(path)!r} ({str(e).splitlines()[0]}): download "
                        f"{DEFAULT_DETECTOR} (huggingface-cli download {DEFAULT_DETECTOR}) and pass its "
                        f"folder") from None
    return Mask2FormerDetector(model, processor, device=device, shortest_edge=shortest_edge)


# ---------------------------------------------------------------------------------------------------
# Colour: CLIP zero-shot over 10 colours x 3 templates on the masked, cropped instance.

COLOR_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # "#999", GenEval's default bgcolor


def masked_crop(image: Image.Image, detection: Detection) -> Image.Image:
    """The instance pasted on a #999999 background (when it has a mask), cropped to its box."""
    image = image.convert("RGB")
    mask = detection.get("mask")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask shape {mask.shape} does not match the image ({image.height}, {image.width})")
        background = Image.new("RGB", image.size, BACKGROUND)
        image = Image.composite(image, background, Image.fromarray(mask))
    return image.crop(tuple(detection["box"][:4]))


class ClipColorClassifier:
    """Colour of each detection by CLIP zero-shot classification; text embeddings cached per class."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, device: str | torch.device = "cpu",
                 batch_size: int = 16):
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_weights(self, classname: str) -> torch.Tensor:
        """(embed_dim, 10): per colour, the renormalised mean of its three normalised template embeddings."""
        if classname not in self._text:
            columns = []
            for color in COLORS:
                texts = [t.format(c=color, obj=classname) for t in COLOR_TEMPLATES]
                emb = F.normalize(self.model.encode_text(self.tokenizer(texts).to(self.device)).float(), dim=-1)
                columns.append(F.normalize(emb.mean(dim=0), dim=-1))
            self._text[classname] = torch.stack(columns, dim=1)
        return self._text[classname]

    @torch.no_grad()
    def classify(self, image: Image.Image, detections: list[Detection], classname: str) -> list[str]:
        weights = self.text_weights(classname)
        dtype = next(self.model.parameters()).dtype
        colors = []
        for start in range(0, len(detections), self.batch_size):
            batch = torch.stack([self.preprocess(masked_crop(image, d))
                                 for d in detections[start:start + self.batch_size]])
            feats = F.normalize(self.model.encode_image(batch.to(self.device, dtype)).float(), dim=-1)
            colors += [COLORS[i] for i in (feats @ weights).argmax(dim=1).tolist()]
        return colors

    def for_image(self, image: Image.Image) -> ColorClassifier:
        """The `classify_color` callable that `score_image` takes, bound to this image."""
        return lambda detections, classname: self.classify(image, list(detections), classname)


def _cached_clip_weights() -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in CLIP_HUB_FILES:
        found = try_to_load_from_cache(CLIP_HUB_REPO, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def load_clip_color_classifier(weights: str | Path | None = None, device: str = "cpu") -> ClipColorClassifier:
    """open_clip ViT-L-14 with OpenAI's weights (QuickGELU) from a local file, or from the local hub cache
    when `weights` is None; never downloads."""
    import open_clip

    path = Path(weights) if weights is not None else _cached_clip_weights()
    if path is None or not path.is_file():
        where = f"at {str(path)!r}" if path is not None else "in the local Hugging Face cache"
        raise DmdrError(f"CLIP ViT-L/14 (OpenAI) weights not found {where}: download {CLIP_HUB_REPO} "
                        f"(huggingface-cli download {CLIP_HUB_REPO} {CLIP_HUB_FILES[1]}) and pass the file")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            CLIP_ARCH, pretrained=str(path), force_quick_gelu=True, device=device)
    except (RuntimeError, ValueError, OSError) as e:
        raise DmdrError(f"CLIP weights {str(path)!r} do not load as open_clip {CLIP_ARCH} "
                        f"({str(e).splitlines()[0]}): pass {CLIP_HUB_REPO}'s {CLIP_HUB_FILES[1]}") from None
    return ClipColorClassifier(model, preprocess, open_clip.get_tokenizer(CLIP_ARCH), device=device)
