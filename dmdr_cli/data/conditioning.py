"""The conditioning of a prompt set, by the prompt's index in the set.

With `data.cache_embeddings` (the default) every distinct prompt is encoded once before training and the text
encoders are freed. Without it, a batch's prompts are encoded when the batch is drawn and the encoders stay
loaded: a set of a million prompts then costs nothing up front and no table of embeddings (an SDXL prompt's
embedding is 77 x 2048 values).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..families.base import Cond


def encode_all(family, prompts: Sequence[str], device=None, batch: int = 64) -> Cond:
    """Embeddings for every prompt, computed once and kept on the CPU (the text encoders can leave the GPU)."""
    prompts = list(prompts)
    parts = [family.encode_prompts(prompts[i:i + batch]).to("cpu") for i in range(0, len(prompts), batch)]
    return Cond.cat(parts)


class PromptConditions:
    """`conds[rows]` -> the Cond of prompts `rows` (a list or a 1-D tensor of indices into `prompts`)."""

    def __init__(self, family, prompts: Sequence[str], cached: bool):
        self.family, self.prompts = family, prompts
        self.table = self.row_of = None
        if cached:  # repeats share one row of the table
            distinct = list(dict.fromkeys(prompts))
            where = {p: i for i, p in enumerate(distinct)}
            self.row_of = torch.tensor([where[p] for p in prompts])
            self.table = encode_all(family, distinct)

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def __getitem__(self, rows) -> Cond:
        rows = torch.as_tensor(rows, dtype=torch.long)
        if self.table is not None:
            return self.table[self.row_of[rows]]
        return self.family.encode_prompts([self.prompts[int(i)] for i in rows])
