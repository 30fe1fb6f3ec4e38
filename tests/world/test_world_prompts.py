"""GenEval-style prompts: metadata schema per task, proportions, and scenes that satisfy their metadata."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from dmdr_cli.errors import DmdrError
from dmdr_cli.evaluate.geneval_score import score_image
from dmdr_cli.world.detect import detect_objects
from dmdr_cli.world.geometry import RELATIONS
from dmdr_cli.world.prompts import (
    GENEVAL_TASK_SIZES,
    NUMBER_WORDS,
    TASKS,
    generate_prompts,
    render_for,
    task_pool,
    training_pairs,
)
from dmdr_cli.world.scene import COLORS, SHAPES, SUPPORTED_SIZES


def meets_metadata(metadata: dict, detections: list[dict]) -> bool:
    """The project's GenEval scorer, fed the exact detector's detections."""
    correct, _reason = score_image(metadata, detections)
    return correct


def _check_schema(metadata: dict) -> None:
    assert list(metadata) in (["tag", "include", "prompt"], ["tag", "include", "exclude", "prompt"])
    assert metadata["tag"] in TASKS and metadata["prompt"].startswith("a photo of ")
    for entry in metadata["include"]:
        assert set(entry) <= {"class", "count", "color", "position"}
        assert entry["class"] in SHAPES and isinstance(entry["count"], int) and entry["count"] >= 1
        assert entry.get("color", COLORS[0]) in COLORS
    json.dumps(metadata)  # one JSON line per prompt, as GenEval stores it


def test_single_object_and_colors():
    assert task_pool("single_object")[0] == {
        "tag": "single_object",
        "include": [{"class": "circle", "count": 1}],
        "prompt": "a photo of a circle",
    }
    colors = task_pool("colors")
    assert len(colors) == len(SHAPES) * len(COLORS)
    for m in colors:
        _check_schema(m)
        (entry,) = m["include"]
        assert m["prompt"] == f"a photo of a {entry['color']} {entry['class']}"


def test_two_object_and_color_attr_name_two_different_shapes():
    for m in task_pool("two_object") + task_pool("color_attr"):
        _check_schema(m)
        a, b = m["include"]
        assert a["class"] != b["class"] and a["count"] == b["count"] == 1
        if m["tag"] == "color_attr":
            assert a["color"] != b["color"]
            assert m["prompt"] == f"a photo of a {a['color']} {a['class']} and a {b['color']} {b['class']}"
        else:
            assert "color" not in a and m["prompt"] == f"a photo of a {a['class']} and a {b['class']}"


@pytest.mark.parametrize("size, largest", [(16, 2), (24, 4), (32, 4)])
def test_counting_excludes_one_more(size, largest):
    pool = task_pool("counting", size)
    assert {m["include"][0]["count"] for m in pool} == set(range(1, largest + 1))
    for m in pool:
        _check_schema(m)
        (entry,) = m["include"]
        assert m["exclude"] == [{"class": entry["class"], "count": entry["count"] + 1}]
        assert m["prompt"].startswith(f"a photo of {NUMBER_WORDS[entry['count']]} {entry['class']}")


def test_position_puts_the_reference_first():
    pool = task_pool("position")
    assert len(pool) == len(SHAPES) * (len(SHAPES) - 1) * len(RELATIONS)
    for m in pool:
        _check_schema(m)
        reference, positioned = m["include"]
        assert "position" not in reference
        relation, index = positioned["position"]
        assert index == 0 and relation in RELATIONS
        assert m["prompt"] == f"a photo of a {positioned['class']} {relation} a {reference['class']}"


def test_generate_prompts_follows_geneval_proportions_and_repeats_late():
    prompts = generate_prompts(553, seed=43)
    assert Counter(m["tag"] for m in prompts) == GENEVAL_TASK_SIZES
    assert [m["tag"] for m in prompts] == sorted((m["tag"] for m in prompts), key=TASKS.index)
    assert prompts == generate_prompts(553, seed=43)
    colour_attr = [m["prompt"] for m in prompts if m["tag"] == "color_attr"]
    assert len(set(colour_attr)) == len(colour_attr)  # 100 drawn from 180: no repeats
    singles = [m["prompt"] for m in prompts if m["tag"] == "single_object"]
    assert len(set(singles[:3])) == 3  # every distinct prompt before any repeat
    assert [m["tag"] for m in generate_prompts(10, 0, tasks=["position"])] == ["position"] * 10
    with pytest.raises(DmdrError):
        generate_prompts(5, 0, tasks=["counting", "spelling"])


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_every_rendered_scene_satisfies_its_metadata(size):
    rng = np.random.default_rng(size)
    for metadata in generate_prompts(300, seed=size, size=size):
        image, objects = render_for(metadata, rng, size)
        assert image.shape == (size, size, 3)
        assert len(objects) == sum(entry["count"] for entry in metadata["include"])
        assert meets_metadata(metadata, detect_objects(image)), metadata["prompt"]


def test_metadata_judge_rejects_wrong_scenes():
    rng = np.random.default_rng(3)
    left = next(m for m in task_pool("position") if m["prompt"] == "a photo of a circle left of a square")
    right = next(m for m in task_pool("position") if m["prompt"] == "a photo of a circle right of a square")
    three = next(m for m in task_pool("counting") if m["prompt"] == "a photo of three circles")
    four = next(m for m in task_pool("counting") if m["prompt"] == "a photo of four circles")
    two = next(m for m in task_pool("counting") if m["prompt"] == "a photo of two circles")
    red_circle = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": ""}
    for _ in range(20):
        assert not meets_metadata(right, detect_objects(render_for(left, rng)[0]))
        assert not meets_metadata(three, detect_objects(render_for(four, rng)[0]))  # excluded
        assert not meets_metadata(three, detect_objects(render_for(two, rng)[0]))  # too few
    blue_circle = dict(red_circle, include=[{"class": "circle", "count": 1, "color": "blue"}])
    assert not meets_metadata(red_circle, detect_objects(render_for(blue_circle, rng)[0]))


def test_unrenderable_metadata_is_a_user_error():
    rng = np.random.default_rng(0)
    coco = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    impossible = {
        "tag": "counting",
        "include": [{"class": "circle", "count": 2}],
        "exclude": [{"class": "circle", "count": 2}],
        "prompt": "",
    }
    four = {"tag": "counting", "include": [{"class": "circle", "count": 4}], "prompt": "four circles"}
    for metadata, size in ((coco, 32), (impossible, 32), (four, 16), ({"tag": "colors"}, 32)):
        with pytest.raises(DmdrError):
            render_for(metadata, rng, size)


def test_training_pairs_are_deterministic_images_with_prompts():
    pairs = list(training_pairs(40, seed=5, size=24))
    again = list(training_pairs(40, seed=5, size=24))
    assert len(pairs) == 40
    assert all(np.array_equal(a, b) and p == q for (a, p), (b, q) in zip(pairs, again))
    assert all(image.shape == (24, 24, 3) and image.dtype == np.uint8 for image, _ in pairs)
    known = {m["prompt"] for task in TASKS for m in task_pool(task, 24)}
    assert {prompt for _, prompt in pairs} <= known
    assert len({prompt for _, prompt in pairs}) > 20
