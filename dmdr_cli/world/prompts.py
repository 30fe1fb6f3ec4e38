"""GenEval's six tasks transposed to the shapes world: prompts, their metadata, and scenes that obey them.

Metadata follows GenEval's `evaluation_metadata.jsonl` exactly:

    {"tag": "position",
     "include": [{"class": "square", "count": 1},
                 {"class": "circle", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a circle left of a square"}

`include` entries hold `class` and `count`, plus `color` for colors / color_attr and `position`
[relation, index of the reference include] for position (the reference comes first, as in GenEval).
Counting adds `exclude` [{"class", "count": N + 1}] so the count is exact.

A scene shows exactly the objects its prompt names: no distractors, so a prompt describes its whole
image and the tiny teacher learns an unambiguous mapping. Where the prompt is silent (colour, size,
position unless a relation is asked) the scene is random.
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterator

import numpy as np

from ..errors import DmdrError
from .geometry import RELATIONS
from .render import render_scene
from .scene import (
    COLORS,
    DEFAULT_SIZE,
    MAX_OBJECTS,
    SHAPES,
    ObjectSpec,
    Relation,
    SceneObject,
    SceneSpec,
    check_size,
    sample_layout,
)

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_TASK_SIZES = {  # prompts per task in GenEval's 553
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(shape: str) -> str:
    return shape + "s"


def max_count(size: int) -> int:
    """The largest count a counting prompt may ask for at this resolution."""
    return min(len(NUMBER_WORDS) - 1, MAX_OBJECTS[check_size(size)])


def task_pool(task: str, size: int = DEFAULT_SIZE) -> list[dict]:
    """Every distinct prompt of `task` whose scene fits at `size`, as GenEval metadata."""
    pairs = list(itertools.permutations(SHAPES, 2))
    if task == "single_object":
        return [_metadata(task, [_include(a)], f"a photo of {with_article(a)}") for a in SHAPES]
    if task == "two_object":
        return [
            _metadata(task, [_include(a), _include(b)], f"a photo of {with_article(a)} and {with_article(b)}")
            for a, b in pairs
        ]
    if task == "counting":
        return [
            _metadata(
                task,
                [_include(a, count=n)],
                f"a photo of {NUMBER_WORDS[n]} {a if n == 1 else plural(a)}",
                exclude=[{"class": a, "count": n + 1}],
            )
            for a in SHAPES
            for n in range(1, max_count(size) + 1)
        ]
    if task == "colors":
        return [
            _metadata(task, [_include(a, color=c)], f"a photo of {with_article(f'{c} {a}')}")
            for a in SHAPES
            for c in COLORS
        ]
    if task == "position":
        # GenEval lists the reference object first; the prompt names the positioned one first.
        return [
            _metadata(
                task,
                [_include(b), _include(a, position=[rel, 0])],
                f"a photo of {with_article(a)} {rel} {with_article(b)}",
            )
            for a, b in pairs
            for rel in RELATIONS
        ]
    if task == "color_attr":
        return [
            _metadata(
                task,
                [_include(a, color=ca), _include(b, color=cb)],
                f"a photo of {with_article(f'{ca} {a}')} and {with_article(f'{cb} {b}')}",
            )
            for a, b in pairs
            for ca, cb in itertools.permutations(COLORS, 2)
        ]
    raise DmdrError(f"unknown GenEval task {task!r}; expected one of {', '.join(TASKS)}")


def generate_prompts(
    n: int, seed: int, tasks: list[str] | None = None, size: int = DEFAULT_SIZE
) -> list[dict]:
    """`n` prompts split over `tasks` (default: all six) in GenEval's proportions, grouped by task.

    Within a task, every distinct prompt appears once (in random order) before any repeats: the
    pools are small (3 single-object prompts, 180 colour-attribute ones), so repeats are expected.
    """
    tasks = list(TASKS) if tasks is None else list(tasks)
    rng = np.random.default_rng(seed)
    prompts: list[dict] = []
    for task, quota in zip(tasks, _split(n, [_task_weight(t) for t in tasks])):
        pool = task_pool(task, size)
        while quota > 0:
            take = min(quota, len(pool))
            prompts += [copy.deepcopy(pool[i]) for i in rng.permutation(len(pool))[:take]]
            quota -= take
    return prompts


def scene_spec(metadata: dict) -> SceneSpec:
    """The objects and relations a GenEval prompt asks for (every instance of every include)."""
    try:
        return _scene_spec(metadata)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise DmdrError(f"malformed GenEval metadata {metadata!r}: {err!r}") from err


def render_for(
    metadata: dict, rng: np.random.Generator, size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, list[SceneObject]]:
    """A random scene satisfying `metadata`: (size x size x 3 uint8 image, the objects drawn in it)."""
    objects = sample_layout(scene_spec(metadata), size, rng)
    return render_scene(objects, size), objects


def training_pairs(n: int, seed: int, size: int = DEFAULT_SIZE) -> Iterator[tuple[np.ndarray, str]]:
    """`n` (image, prompt) pairs for teacher training: tasks in GenEval's proportions, prompts uniform
    within a task, and a fresh random scene for every pair."""
    rng = np.random.default_rng(seed)
    pools = [task_pool(task, size) for task in TASKS]
    weights = np.array([_task_weight(task) for task in TASKS], dtype=np.float64)
    for _ in range(n):
        pool = pools[rng.choice(len(TASKS), p=weights / weights.sum())]
        metadata = pool[rng.integers(len(pool))]
        image, _ = render_for(metadata, rng, size)
        yield image, metadata["prompt"]


def _scene_spec(metadata: dict) -> SceneSpec:
    includes = metadata["include"]
    counts = [int(entry["count"]) for entry in includes]
    objects = [
        ObjectSpec(entry["class"], entry.get("color")) for entry, n in zip(includes, counts) for _ in range(n)
    ]
    first = np.cumsum([0] + counts)  # index of each include's first object
    members = [range(first[i], first[i + 1]) for i in range(len(includes))]
    relations = []
    for i, entry in enumerate(includes):
        if "position" in entry:
            relation, reference = entry["position"]
            relations += [Relation(s, relation, r) for s in members[i] for r in members[int(reference)]]
    for entry in metadata.get("exclude", []):
        shown = sum(n for include, n in zip(includes, counts) if include["class"] == entry["class"])
        if shown >= entry["count"]:
            raise DmdrError(
                f"unsatisfiable metadata {metadata.get('prompt')!r}: "
                f"it includes {shown} {entry['class']} and excludes {entry['count']}"
            )
    return SceneSpec(tuple(objects), tuple(relations))


def _include(shape: str, count: int = 1, color: str | None = None, position: list | None = None) -> dict:
    entry: dict = {"class": shape, "count": count}
    if color is not None:
        entry["color"] = color
    if position is not None:
        entry["position"] = position
    return entry


def _metadata(task: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict:
    metadata: dict = {"tag": task, "include": include}
    if exclude is not None:
        metadata["exclude"] = exclude
    metadata["prompt"] = prompt
    return metadata


def _task_weight(task: str) -> int:
    if task not in GENEVAL_TASK_SIZES:
        raise DmdrError(f"unknown GenEval task {task!r}; expected one of {', '.join(TASKS)}")
    return GENEVAL_TASK_SIZES[task]


def _split(n: int, weights: list[int]) -> list[int]:
    """`n` split in proportion to `weights`, rounding by largest remainder (GenEval's 553 -> its sizes)."""
    exact = np.asarray(weights, dtype=np.float64) * n / sum(weights)
    quotas = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quotas), kind="stable")[: n - quotas.sum()]:
        quotas[i] += 1
    return quotas.tolist()
