"""CLIP score as a reward: cosine of an open_clip model's image and text embeddings.

The training reward defaults to DMDR's: DFN5B CLIP ViT-H-14 at 224 px (Fang et al. 2023, arXiv
2309.17425; the authors' scripts pass "Apple_CLIP-H-14-224.bin"), which open_clip lists as
`ViT-H-14-quickgelu` / `dfn5b` (hub apple/DFN5B-CLIP-ViT-H-14, QuickGELU, "squash" resize).

Evaluation CLIP scores have no single convention (EVAL.md), so architecture and weights are knobs:
- torchmetrics `CLIPScore`: max(100 cos, 0) with OpenAI ViT-L/14;
- DMD2: open_clip ViT-g-14 `laion2b_s12b_b42k`, raw cosine, captions prefixed "A photo depicts ";
- DMDR: DFN5B ViT-H-14 cosine.
Scores here are raw cosines; reports print 100 x cosine and say which model they used.
"""

from __future__ import annotations

from .openclip import OpenClipCosineReward, load_open_clip, open_clip_tokenizer

DEFAULT_ARCH = "ViT-H-14-quickgelu"
DEFAULT_PRETRAINED = "dfn5b"


class ClipReward(OpenClipCosineReward):
    name = "clip"
    units = "cosine"
    # DMDR's ReFL: relu(0.7 - cos) on the DFN5B cosine (~0.3), always active (authors' scripts).
    default_margin = 0.7

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, arch: str = DEFAULT_ARCH,
                        pretrained: str | None = DEFAULT_PRETRAINED, key: str = "rl.rewards[i]") -> "ClipReward":
        """arch: an open_clip architecture; pretrained: an open_clip tag (gives the hub repo, QuickGELU and
        preprocessing) or None; path: a weights file, a folder, or a hub repo id overriding the tag's repo."""
        model, image_input = load_open_clip(arch, tag=pretrained, path=path, setting=f"{key}.path")
        source = path or f"open_clip {arch} {pretrained}"
        return cls(model, open_clip_tokenizer(arch), image_input, source=str(source))
