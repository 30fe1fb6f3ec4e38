"""world-clip's blind spots, measured: can it pick a clean render's true prompt over minimal edits of it?

One probe per GenEval task, each changing exactly the thing the task is about:

    single_object  the shape              -> the other shapes
    colors         the colour             -> the other colours
    counting       the count              -> every other count that fits
    two_object     one of the two shapes  -> the third shape, in either slot
    position       the relation           -> its opposite (left of <-> right of, above <-> below)
    color_attr     which object has which colour -> the two colours swapped

Distractors are looked up in the task's own prompt pool by their GenEval metadata, so they are worded
exactly like real prompts. Accuracy = how often the true prompt scores highest; chance = 1 / (1 + the
number of distractors).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from .prompts import TASKS, generate_prompts, max_count, render_for, task_pool
from .scene import COLORS, SHAPES

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _key(include: list[dict]) -> str:
    return json.dumps(include, sort_keys=True)


def distractor_includes(task: str, include: list[dict], size: int) -> list[list[dict]]:
    """The minimal edits of a prompt's `include` list that the task's probe tests."""
    edits: list[list[dict]] = []

    def edited(change) -> None:
        new = copy.deepcopy(include)
        change(new)
        edits.append(new)

    if task in ("single_object", "colors", "counting"):
        obj = include[0]
        if task == "single_object":
            for shape in SHAPES:
                if shape != obj["class"]:
                    edited(lambda new, shape=shape: new[0].update({"class": shape}))
        elif task == "colors":
            for color in COLORS:
                if color != obj["color"]:
                    edited(lambda new, color=color: new[0].update({"color": color}))
        else:
            for count in range(1, max_count(size) + 1):
                if count != obj["count"]:
                    edited(lambda new, count=count: new[0].update({"count": count}))
    elif task == "two_object":
        third = next(s for s in SHAPES if s not in (include[0]["class"], include[1]["class"]))
        for slot in (0, 1):
            edited(lambda new, slot=slot: new[slot].update({"class": third}))
    elif task == "position":
        edited(lambda new: new[1].update({"position": [OPPOSITE[include[1]["position"][0]], 0]}))
    elif task == "color_attr":
        def swap(new):
            new[0]["color"], new[1]["color"] = include[1]["color"], include[0]["color"]
        edited(swap)
    else:
        raise ValueError(f"no probe for task {task!r}")
    return edits


@torch.no_grad()
def probe_accuracy(score_matrix, task: str, n: int, size: int, seed: int) -> dict:
    """{"accuracy", "chance", "n"} of picking each of `n` held-out renders' true prompt.

    `score_matrix(images (B, 3, H, W) in [0, 1], prompts) -> (B, P)` scores every image against every prompt.
    """
    prompt_of = {_key(m["include"]): m["prompt"] for m in task_pool(task, size)}
    metadata = generate_prompts(n, seed=seed, tasks=[task], size=size)
    rng = np.random.default_rng(seed)
    images = np.stack([render_for(m, rng, size)[0] for m in metadata])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    candidates = sorted({p for m in metadata for p in [m["prompt"]] + [
        prompt_of[_key(inc)] for inc in distractor_includes(task, m["include"], size)]})
    column = {p: i for i, p in enumerate(candidates)}
    scores = score_matrix(pixels, candidates)
    hits, chance = [], []
    for row, meta in enumerate(metadata):
        rivals = [column[prompt_of[_key(inc)]] for inc in distractor_includes(task, meta["include"], size)]
        hits.append(bool(scores[row, column[meta["prompt"]]] > scores[row, rivals].max()))
        chance.append(1 / (1 + len(rivals)))
    return {"accuracy": float(np.mean(hits)), "chance": float(np.mean(chance)), "n": n}


def probe_all(score_matrix, n: int, size: int, seed: int) -> dict[str, dict]:
    return {task: probe_accuracy(score_matrix, task, n, size, seed) for task in TASKS}
