"""The shapes world's built-in prompt sets, registered on import with `dmdr_cli.data.prompts`:

    builtin:world      1,000 GenEval-style prompts (seed 0, GenEval's task proportions) + 1,000 dense prompts
    builtin:world-val    553 GenEval-style prompts (seed 1, GenEval's 553 split) + 200 dense prompts

Prompts are drawn for 24 px scenes, so every one of them also fits a 32 px world (both hold up to four
objects). "Held out" means different seeds: the GenEval-style pools are small (243 distinct prompts at
24 px, three of them single-object), so both sets contain most of them; the dense prompts of
world-val never appear in world. The world teacher and the world-clip reward train on the dense
items of `world` only (`training_dense_items`), so world-val's dense prompts are unseen by both.
The evaluation set of the world bench (seed 2, `evaluation_dense_items`) is neither of them.
"""

from __future__ import annotations

from functools import lru_cache

from ..data.prompts import register_builtin
from .dense import generate_dense_prompts
from .prompts import generate_prompts

PROMPT_SIZE = 24
TRAIN_GENEVAL, TRAIN_DENSE, TRAIN_SEED = 1000, 1000, 0
VAL_GENEVAL, VAL_DENSE, VAL_SEED = 553, 200, 1
EVAL_SEED = 2  # the frozen evaluation set (world/bench.py): neither training's nor validation's seed


@lru_cache(maxsize=1)
def training_dense_items() -> tuple[dict, ...]:
    """The dense items (prompt, objects, relations, questions) of builtin:world."""
    return tuple(generate_dense_prompts(TRAIN_DENSE, seed=TRAIN_SEED, size=PROMPT_SIZE))


@lru_cache(maxsize=1)
def validation_dense_items() -> tuple[dict, ...]:
    """The dense items of builtin:world-val: drawn with another seed, each prompt once and none of the
    training set's."""
    seen = {item["prompt"] for item in training_dense_items()}
    fresh = []
    for item in generate_dense_prompts(2 * VAL_DENSE, seed=VAL_SEED, size=PROMPT_SIZE):
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            fresh.append(item)
    return tuple(fresh[:VAL_DENSE])


@lru_cache(maxsize=4)
def evaluation_dense_items(n: int) -> tuple[dict, ...]:
    """`n` dense items for the evaluation set: seed EVAL_SEED, each prompt once, none of builtin:world's or
    builtin:world-val's, so neither the teacher, the reward nor knob choices on validation have seen them."""
    seen = {item["prompt"] for item in training_dense_items() + validation_dense_items()}
    fresh = []
    for item in generate_dense_prompts(3 * n, seed=EVAL_SEED, size=PROMPT_SIZE):
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            fresh.append(item)
    return tuple(fresh[:n])


def world_prompts() -> list[str]:
    geneval = generate_prompts(TRAIN_GENEVAL, seed=TRAIN_SEED, size=PROMPT_SIZE)
    return [m["prompt"] for m in geneval] + [item["prompt"] for item in training_dense_items()]


def world_validation_prompts() -> list[str]:
    geneval = generate_prompts(VAL_GENEVAL, seed=VAL_SEED, size=PROMPT_SIZE)
    return [m["prompt"] for m in geneval] + [item["prompt"] for item in validation_dense_items()]


register_builtin("world", world_prompts)
register_builtin("world-val", world_validation_prompts)
