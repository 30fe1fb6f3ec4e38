"""A transformers VQA model as the `answer(image, question) -> str` that DPG-Bench scoring takes.

The official DPG-Bench scorer is mPLUG-large (ModelScope), which transformers does not load; any
chat-style `image-text-to-text` model can stand in, and the report must then say which one was used.
Generative models tend to answer in sentences, so the question is followed by an instruction asking
for a yes/no answer (`instruction=""` sends the bare question, as the official pipeline does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DmdrError

DEFAULT_INSTRUCTION = "Answer with yes or no."


class TransformersVQA:
    """Wraps an `image-text-to-text` pipeline (or anything called the same way) as an answer function."""

    def __init__(self, pipe: Any, instruction: str = DEFAULT_INSTRUCTION, max_new_tokens: int = 8):
        self.pipe = pipe
        self.instruction = instruction
        self.max_new_tokens = max_new_tokens

    def __call__(self, image: Image.Image, question: str) -> str:
        text = f"{question} {self.instruction}".strip()
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
        out = self.pipe(text=messages, max_new_tokens=self.max_new_tokens, return_full_text=False)
        return str(out[0]["generated_text"])


def load_transformers_vqa(path: str | Path, device: str | None = None,
                          instruction: str = DEFAULT_INSTRUCTION) -> TransformersVQA:
    """Load a local model folder with transformers' image-text-to-text pipeline; never downloads."""
    folder = Path(path)
    if not folder.is_dir():
        raise DmdrError(f"VQA model folder {str(folder)!r} does not exist: download an image-text-to-text model "
                        f"(a local transformers folder) and pass its path")
    from transformers import pipeline

    try:
        pipe = pipeline("image-text-to-text", model=str(folder), device=device, dtype="auto")
    except (OSError, ValueError) as e:
        raise DmdrError(f"VQA model folder {str(folder)!r} does not load as an image-text-to-text model "
                        f"({str(e).splitlines()[0]})") from None
    return TransformersVQA(pipe, instruction=instruction)
