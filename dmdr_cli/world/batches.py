"""The rendered training batches of the shapes world, shared by its two trainers (the teacher, the world-clip
reward) and the teacher's evaluation: every batch is keyed by (seed, step), so a resumed run draws exactly what
the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
from collections import deque

import numpy as np
import torch

from .dense import render_dense
from .prompts import training_pairs
from .scene import LayoutError


def derived_seed(*keys: int) -> int:
    """An independent 63-bit seed for each tuple of keys (e.g. seed, step, stream)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run with `threads` CPU threads (0: leave torch's setting), restoring the previous count after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def world_batch(step: int, batch_size: int, seed: int, size: int, dense_fraction: float,
                dense_items: tuple[dict, ...]) -> tuple[torch.Tensor, list[str]]:
    """Step `step`'s scenes: images (B, 3, size, size) in [-1, 1] and their prompts (dense ones last)."""
    n_dense = round(batch_size * dense_fraction) if dense_items else 0
    pairs = list(training_pairs(batch_size - n_dense, seed=derived_seed(seed, step, 0), size=size))
    if n_dense:
        rng = np.random.default_rng(derived_seed(seed, step, 1))
        picks = deque(rng.integers(len(dense_items), size=n_dense))
        while picks:
            item = dense_items[picks.popleft()]
            try:
                pairs.append((render_dense(item, rng, size)[0], item["prompt"]))
            except LayoutError:  # a tight item (three objects in a row at 24 px) can miss a layout: draw another
                picks.append(rng.integers(len(dense_items)))
    images = torch.from_numpy(np.stack([image for image, _ in pairs])).permute(0, 3, 1, 2).float()
    return images / 127.5 - 1, [prompt for _, prompt in pairs]


def dense_pool(size: int, fraction: float) -> tuple[dict, ...]:
    """The dense training items that fit `size` (none when the recipe mixes in no dense prompts)."""
    if fraction == 0:
        return ()
    from .builtin_prompts import PROMPT_SIZE, TRAIN_DENSE, TRAIN_SEED, training_dense_items
    from .dense import generate_dense_prompts

    if size >= PROMPT_SIZE:
        return training_dense_items()
    return tuple(generate_dense_prompts(TRAIN_DENSE, seed=TRAIN_SEED, size=size))  # fewer objects fit
