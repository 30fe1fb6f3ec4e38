"""PickScore (Kirstain et al. 2023, arXiv 2305.01569): a CLIP-H fine-tuned on Pick-a-Pic preferences.

Model card usage (huggingface.co/yuvalkirstain/PickScore_v1): transformers `CLIPModel`, the processor
of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (224 px, bicubic, OpenAI mean/std, text padded/truncated to
77 tokens), score = logit_scale.exp() * cos(image, text). Its logit scale is 100, so scores are about
100 x cosine: ~21-23 on the paper's models (ALGORITHM.md, "Paper's headline results").
The processor's centre crop floors its offset (transformers' `center_crop`: top = (H - 224) // 2), which
this reward's tensor preprocessing matches.
"""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .similarity import ClipSimilarityReward
from .weights import resolve_folder

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MODEL_FILES = (
    ("config.json",),
    ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"),
)
TOKENIZER_FILES = (("tokenizer.json", "vocab.json"),)


class PickScoreReward(ClipSimilarityReward):
    name = "pickscore"
    units = "cosine x logit_scale (100): PickScore"
    # The hinge must sit above the scores it should keep pushing up: 0.7 (DMDR's cosine margin) would be
    # ~30x below typical PickScores (~22) and zero the gradient. 25 stays above the best published model
    # means (22.89, DMDR SD3.5-L) with room to improve, the way ImageReward's ReFL uses relu(2 - r) on a
    # score standardised to mean 0, std 1 (github.com/THUDM/ImageReward, train code); past 25 the loss
    # stops pushing, a guard against reward hacking. Use loss: linear for an uncapped push.
    default_margin = 25.0
    crop_offset = "floor"

    def __init__(self, model: torch.nn.Module, tokenizer, source: str = "in-memory model"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.input_size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)  # 77 for CLIP-H
        # A Python float, not a parameter: casting the model to bf16 would round exp(4.6052) = 100 to ~98.
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.source = source
        self._checkpointing = False
        self.freeze()

    @classmethod
    def from_modules(cls, model: torch.nn.Module, tokenizer) -> "PickScoreReward":
        """Wrap a built `CLIPModel` and a transformers tokenizer (tests use tiny random ones)."""
        return cls(model, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, processor: str | None = None,
                        key: str = "rl.rewards[i]") -> "PickScoreReward":
        """path: a model folder or hub id (None: PickScore_v1); processor: where the tokenizer lives
        (None: the laion CLIP-H repo the model card names)."""
        from transformers import AutoTokenizer, CLIPModel

        model_source = resolve_folder(path or PICKSCORE_MODEL, MODEL_FILES,
                                      get_it=f"the Hugging Face repo {PICKSCORE_MODEL}", setting=f"{key}.path")
        tokenizer_source = resolve_folder(processor or PICKSCORE_PROCESSOR, TOKENIZER_FILES,
                                          get_it=f"the Hugging Face repo {PICKSCORE_PROCESSOR}",
                                          setting=f"{key}.options.processor")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot read the tokenizer at {tokenizer_source} ({str(e).splitlines()[0]}): it needs "
                                 f"tokenizer.json, or vocab.json and merges.txt, as in {PICKSCORE_PROCESSOR}") from None
        model = CLIPModel.from_pretrained(model_source)
        return cls(model, tokenizer, source=model_source)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt").to(self.device)
        return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens.get("attention_mask")))

    def set_gradient_checkpointing(self, enabled: bool = True) -> bool:
        if enabled and float(getattr(self.model.config.vision_config, "attention_dropout", 0.0)) > 0:
            return False  # see _mark_checkpointed_layers: training mode would switch dropout on
        _toggle_hf_checkpointing(self.model, enabled)
        self._checkpointing = enabled
        self._mark_checkpointed_layers()
        return True

    def train(self, mode: bool = True) -> "PickScoreReward":
        super().train(mode)
        self._mark_checkpointed_layers()
        return self

    def _mark_checkpointed_layers(self) -> None:
        # transformers checkpoints only while the module holding the flag (the encoder layers in 5.x, the
        # encoder in 4.x) is in training mode. Setting that flag alone, children left in eval, changes
        # nothing else: CLIP's attention dropout is 0 (checked in set_gradient_checkpointing).
        for module in self.model.vision_model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.training = self._checkpointing


def _pooled(output) -> torch.Tensor:
    # transformers >= 5 returns a BaseModelOutputWithPooling whose pooler_output is the projection; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _toggle_hf_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old names warn)
        model.activation_checkpointing_enable() if enabled else model.activation_checkpointing_disable()
    elif enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
