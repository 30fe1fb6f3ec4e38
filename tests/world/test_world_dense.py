"""DPG-style dense prompts: the question graph is well formed and its checks read images correctly."""

from __future__ import annotations

import numpy as np
import pytest

from dmdr_cli.errors import DmdrError
from dmdr_cli.world.answer import answer_questions, apply_dependencies
from dmdr_cli.world.dense import CATEGORIES, describe, generate_dense_prompts, render_dense
from dmdr_cli.world.detect import detect_objects
from dmdr_cli.world.render import render_scene
from dmdr_cli.world.scene import MAX_OBJECTS, SUPPORTED_SIZES, ObjectSpec, Relation, SceneObject, SceneSpec


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_question_graph_is_well_formed(size):
    items = generate_dense_prompts(60, seed=size, size=size)
    assert items == generate_dense_prompts(60, seed=size, size=size)
    assert len({item["item_id"] for item in items}) == len(items)
    for item in items:
        objects, questions = item["objects"], item["questions"]
        assert 2 <= len(objects) <= MAX_OBJECTS[size]
        assert len(item["relations"]) == len(objects) - 1
        assert [q["proposition_id"] for q in questions] == list(range(1, len(questions) + 1))
        by_id = {q["proposition_id"]: q for q in questions}
        for q in questions:
            assert q["category"] in CATEGORIES and q["question"].endswith("?")
            assert all(parent < q["proposition_id"] for parent in q["dependency"])  # parents come first
            parents = [by_id[p] for p in q["dependency"]]
            kind = q["check"]["kind"]
            if q["category"] == "entity":
                assert kind == "exists" and parents == []
            elif q["category"] in ("attribute", "other"):
                assert kind in ("color", "count") and [p["category"] for p in parents] == ["entity"]
                assert parents[0]["check"]["class"] == q["check"]["class"]
            else:
                assert kind == "relation" and q["check"]["relation"] in q["question"]
                # Depends on the questions establishing both referents: one per referent unless both
                # are established by the same entity question.
                referents = [q["check"]["subject"], q["check"]["reference"]]
                established = {(p["check"]["class"], p["check"].get("color")) for p in parents}
                assert {(r["class"], r.get("color")) for r in referents} == established


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_rendered_items_answer_yes_to_every_question(size):
    rng = np.random.default_rng(size)
    for item in generate_dense_prompts(40, seed=size + 1, size=size):
        image, objects = render_dense(item, rng, size)
        assert len(objects) == len(item["objects"])
        answers = answer_questions(item["questions"], detect_objects(image))
        assert all(answers.values()), (item["prompt"], answers)


def test_wrong_image_is_masked_through_dependencies():
    spec = SceneSpec(
        (ObjectSpec("circle", "red"), ObjectSpec("circle", "blue"), ObjectSpec("square")),
        (Relation(1, "left of", 0), Relation(2, "below", 0)),
    )
    item = describe(spec, item_id="hand-made")
    assert item["prompt"] == (
        "a photo of a red circle, a blue circle and a square. "
        "the blue circle is left of the red circle. the square is below the red circle."
    )
    # A green circle where the red one should be; the square sits below it, to the right of the blue one.
    image = render_scene(
        [
            SceneObject("circle", "green", 14, 4, 7),
            SceneObject("circle", "blue", 2, 4, 7),
            SceneObject("square", "white", 14, 20, 7),
        ],
        32,
    )
    raw = answer_questions(item["questions"], detect_objects(image))
    masked = apply_dependencies(item["questions"], raw)
    text = {q["question"]: q["proposition_id"] for q in item["questions"]}
    assert raw[text["is there a red circle?"]] is False and raw[text["is there a blue circle?"]] is True
    assert raw[text["are there two circles?"]] is True
    # "the square is below the red circle": no red circle, so "no" even though a circle is above it.
    assert raw[text["is the square below the red circle?"]] is False
    assert masked[text["is the blue circle left of the red circle?"]] is False
    assert sum(masked.values()) == 4  # the entities, the count and the blue circle
    with pytest.raises(DmdrError):
        describe(SceneSpec((ObjectSpec("circle", "red"), ObjectSpec("circle"))), item_id="ambiguous")
