"""HPSv2 / HPSv2.1 (Wu et al. 2023, arXiv 2306.09341): an open_clip ViT-H-14 fine-tuned on human
preferences. Score = cosine of the normalised image and text embeddings (tables print 100 x cosine).

The checkpoint is a pickle whose weights sit under "state_dict"; open_clip 3.3's `ViT-H-14` has the same
686 keys and tokenizer as the model vendored in the `hpsv2` package (EVAL.md), so that package (which
pins old pytest/protobuf and ships without its BPE vocab) is not needed.

Images are prepared with HPSv2's own transform, not open_clip's default: the longest side resized to
224 and the rest padded with black (HPSv2's `create_model_and_transforms` builds its validation
transform with `resize_longest_max=True`), so a portrait 832x1216 image is scored whole, not cropped.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import ModelLoadError
from .openclip import ImageInput, OpenClipCosineReward, Tokenizer, build_open_clip, image_input_of, open_clip_tokenizer
from .weights import load_into, load_state_dict, resolve_file

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_ARCH = "ViT-H-14"


class HPSReward(OpenClipCosineReward):
    name = "hps"
    units = "cosine"
    # DMDR's ReFL: relu(0.7 - cos). HPS cosines are ~0.27-0.33 (paper tables: 27-33 as 100 x cos), so
    # the hinge never switches off (authors' train_sd3_refl_deepspeed.py, github.com/vvvvvjdy/dmdr).
    default_margin = 0.7
    # The authors' training prompts for HPS: "Realistic photo" + " " + prompt (their --magic-prompt).
    prompt_prefix = "Realistic photo"

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, image_input: ImageInput | None = None,
                 source: str = "in-memory model"):
        spec = image_input or image_input_of(model.visual)
        super().__init__(model, tokenizer, replace(spec, resize_mode="longest"), source)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, version: str = "v2.1", arch: str = HPS_ARCH,
                        key: str = "rl.rewards[i]") -> "HPSReward":
        """path: the .pt file, a folder holding it, or a hub repo id; None: the HPSv2 hub repo.
        `arch` exists for tests with tiny models; real HPS checkpoints are ViT-H-14."""
        if version not in HPS_FILES:
            raise ModelLoadError(f"unknown HPS version {version!r}: use one of {', '.join(HPS_FILES)}")
        file = resolve_file(path, HPS_FILES[version], default_repo=HPS_REPO,
                            get_it=f"the Hugging Face repo {HPS_REPO}", setting=f"{key}.path")
        state = load_state_dict(file)  # an unreadable file fails before the (slow) ViT-H-14 build
        model = build_open_clip(arch)
        load_into(model, state, file, f"open_clip {arch} (HPS{version})")
        return cls(model, open_clip_tokenizer(arch), image_input_of(model.visual), source=str(file))
