"""`data.images: builtin:world-renders`: the shapes world's real images for the GAN term, registered on import.

The world has no photographs, but its renderer is its ground truth: entry j of builtin:world (its GenEval-style
prompts, then its dense items; drawn again for the size of a world smaller than builtin:world's 24 px) rendered
as a fresh random scene that satisfies it, captioned by its prompt.
Global sample i draws its scene from `numpy.random.default_rng([seed, i])`, so the supply never repeats and a
resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from ..data.images import register_image_source
from .bench import render_entry
from .builtin_prompts import PROMPT_SIZE, TRAIN_DENSE, TRAIN_GENEVAL, TRAIN_SEED, training_dense_items
from .dense import generate_dense_prompts
from .prompts import generate_prompts
from .scene import LayoutError, check_size

# a tight item (four objects and three relations at 24 px) can miss a layout in one search of 1000 tries; its
# stream goes on for another search, so a sample stays a function of (seed, i)
SEARCHES = 20


class WorldRenders:
    def __init__(self, resolution: int, seed: int):
        self.size, self.seed = check_size(resolution), seed
        if resolution >= PROMPT_SIZE:  # builtin:world's own prompts fit every world from 24 px up
            self.entries = generate_prompts(TRAIN_GENEVAL, seed=TRAIN_SEED, size=PROMPT_SIZE) + list(training_dense_items())
        else:  # a smaller world holds fewer objects: its prompts are drawn the same way for its size
            self.entries = (generate_prompts(TRAIN_GENEVAL, seed=TRAIN_SEED, size=resolution)
                            + generate_dense_prompts(TRAIN_DENSE, seed=TRAIN_SEED, size=resolution))
        self.description = f"fresh renders of builtin:world's {len(self.entries)} prompts at {resolution} px"

    def __len__(self) -> int:
        return len(self.entries)

    def captions(self) -> list[str]:
        return [entry["prompt"] for entry in self.entries]

    def draw(self, index: int, sample_id: int):
        entry, rng = self.entries[index], np.random.default_rng([self.seed, sample_id])
        for search in range(SEARCHES):
            try:
                return render_entry(entry, rng, self.size), entry["prompt"]
            except LayoutError:
                if search == SEARCHES - 1:
                    raise


register_image_source("world-renders", WorldRenders)
