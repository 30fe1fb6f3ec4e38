"""DPG-Bench-style dense prompts for the shapes world: several objects, colours, relations, and the
question graph that grades an image of them.

An item:

    {"item_id": "shapes-0003",
     "prompt": "a photo of a red circle, a blue circle and a square. the blue circle is left of
                the red circle. the square is below the red circle.",
     "objects": [{"class": "circle", "color": "red"}, {"class": "circle", "color": "blue"},
                 {"class": "square"}],
     "relations": [{"subject": 1, "relation": "left of", "reference": 0}, ...],
     "questions": [
        {"proposition_id": 1, "question": "is there a circle?", "dependency": [],
         "category": "entity", "check": {"kind": "exists", "class": "circle"}},
        {"proposition_id": 2, "question": "are there two circles?", "dependency": [1],
         "category": "other", "check": {"kind": "count", "class": "circle", "count": 2}},
        {"proposition_id": 4, "question": "is there a red circle?", "dependency": [1],
         "category": "attribute", "check": {"kind": "color", "class": "circle", "color": "red"}},
        {"proposition_id": 6, "question": "is the blue circle left of the red circle?",
         "dependency": [4, 5], "category": "relation",
         "check": {"kind": "relation", "subject": {"class": "circle", "color": "blue"},
                   "relation": "left of", "reference": {"class": "circle", "color": "red"}}}, ...]}

Proposition ids count from 1 in graph order, so every parent precedes its children (DPG masks in CSV
order). An object is named by its shape alone ("the square") when it is the only one of its shape,
else by colour and shape; a relation question depends on the questions that establish its two
referents (the entity question, or the colour question for a colour-named referent). Checks are read
against detections by answer.py.

Every item is drawn only if a layout for it exists at the requested resolution, so an item can
always be rendered (render_dense) for training or as a reference image.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import DmdrError
from .geometry import RELATIONS
from .prompts import NUMBER_WORDS, plural, with_article
from .render import render_scene
from .scene import (
    COLORS,
    DEFAULT_SIZE,
    MAX_OBJECTS,
    SHAPES,
    LayoutError,
    ObjectSpec,
    Relation,
    SceneObject,
    SceneSpec,
    check_size,
    sample_layout,
)

CATEGORIES = ("entity", "attribute", "relation", "other")
COLORLESS_PROBABILITY = 0.25  # chance that an object alone of its shape is described without a colour


def generate_dense_prompts(n: int, seed: int, size: int = DEFAULT_SIZE) -> list[dict]:
    """`n` dense items, each with 2 to MAX_OBJECTS[size] objects linked into a tree of relations."""
    check_size(size)
    rng = np.random.default_rng(seed)
    items: list[dict] = []
    while len(items) < n:
        spec = _draw_spec(rng, size)
        try:
            sample_layout(spec, size, rng, attempts=50)
        except LayoutError:
            continue  # e.g. four objects in a row at 24 px: draw another scene
        items.append(describe(spec, item_id=f"shapes-{len(items):04d}"))
    return items


def describe(spec: SceneSpec, item_id: str) -> dict:
    """The dense item (prompt, scene, question graph) for a scene specification."""
    for obj in spec.objects:
        if obj.color is None and not _named_by_shape(obj, spec.objects):
            raise DmdrError(f"{spec}: objects that share a shape need colours to tell them apart")
    names = _referents(spec.objects)
    listing = [with_article(f"{o.color} {o.shape}" if o.color else o.shape) for o in spec.objects]
    sentences = [f"a photo of {_join(listing)}"]
    sentences += [f"{names[r.subject]} is {r.relation} {names[r.reference]}" for r in spec.relations]
    return {
        "item_id": item_id,
        "prompt": ". ".join(sentences) + ".",
        "objects": [{"class": o.shape, **({"color": o.color} if o.color else {})} for o in spec.objects],
        "relations": [
            {"subject": r.subject, "relation": r.relation, "reference": r.reference} for r in spec.relations
        ],
        "questions": _question_graph(spec, names),
    }


def dense_spec(item: dict) -> SceneSpec:
    objects = tuple(ObjectSpec(o["class"], o.get("color")) for o in item["objects"])
    relations = tuple(Relation(r["subject"], r["relation"], r["reference"]) for r in item["relations"])
    return SceneSpec(objects, relations)


def render_dense(
    item: dict, rng: np.random.Generator, size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, list[SceneObject]]:
    """A random scene that makes every answer of `item` "yes": (image, objects drawn)."""
    objects = sample_layout(dense_spec(item), size, rng)
    return render_scene(objects, size), objects


def _draw_spec(rng: np.random.Generator, size: int) -> SceneSpec:
    count = int(rng.integers(2, MAX_OBJECTS[size] + 1))
    kinds = list(itertools.product(SHAPES, COLORS))
    chosen = [kinds[i] for i in rng.choice(len(kinds), size=count, replace=False)]
    shape_counts = {shape: sum(s == shape for s, _ in chosen) for shape in SHAPES}
    # Only an object alone of its shape may go without a colour: the others are named by it.
    objects = []
    for shape, color in chosen:
        colorless = shape_counts[shape] == 1 and rng.random() < COLORLESS_PROBABILITY
        objects.append(ObjectSpec(shape, None if colorless else color))
    # A tree: each object after the first relates to one earlier object, so the relations never contradict.
    relations = tuple(
        Relation(i, str(rng.choice(RELATIONS)), int(rng.integers(i))) for i in range(1, count)
    )
    return SceneSpec(tuple(objects), relations)


def _referents(objects: tuple[ObjectSpec, ...]) -> list[str]:
    """How the prompt and questions name each object: by shape alone when that is unambiguous."""
    return [f"the {o.shape}" if _named_by_shape(o, objects) else f"the {o.color} {o.shape}" for o in objects]


def _named_by_shape(obj: ObjectSpec, objects: tuple[ObjectSpec, ...]) -> bool:
    return sum(o.shape == obj.shape for o in objects) == 1


def _question_graph(spec: SceneSpec, names: list[str]) -> list[dict]:
    questions: list[dict] = []

    def ask(question: str, category: str, check: dict, parents: list[int]) -> int:
        questions.append(
            {
                "proposition_id": len(questions) + 1,
                "question": question,
                "dependency": sorted(set(parents)),
                "category": category,
                "check": check,
            }
        )
        return len(questions)

    objects = spec.objects
    entity: dict[str, int] = {}
    for shape in dict.fromkeys(o.shape for o in objects):  # shapes in order of first mention
        check = {"kind": "exists", "class": shape}
        entity[shape] = ask(f"is there {with_article(shape)}?", "entity", check, [])
        count = sum(o.shape == shape for o in objects)
        if count > 1:
            check = {"kind": "count", "class": shape, "count": count}
            ask(f"are there {NUMBER_WORDS[count]} {plural(shape)}?", "other", check, [entity[shape]])

    # The question that establishes each referent: its colour question if the name needs the colour.
    establishes = [entity[o.shape] for o in objects]
    for i, obj in enumerate(objects):
        if obj.color is None:
            continue
        if _named_by_shape(obj, objects):
            question = f"is the {obj.shape} {obj.color}?"
        else:
            question = f"is there {with_article(f'{obj.color} {obj.shape}')}?"
        check = {"kind": "color", "class": obj.shape, "color": obj.color}
        attribute = ask(question, "attribute", check, [entity[obj.shape]])
        if not _named_by_shape(obj, objects):
            establishes[i] = attribute

    def described(i: int) -> dict:
        obj = objects[i]
        if _named_by_shape(obj, objects):
            return {"class": obj.shape}
        return {"class": obj.shape, "color": obj.color}

    for r in spec.relations:
        check = {
            "kind": "relation",
            "subject": described(r.subject),
            "relation": r.relation,
            "reference": described(r.reference),
        }
        question = f"is {names[r.subject]} {r.relation} {names[r.reference]}?"
        ask(question, "relation", check, [establishes[r.subject], establishes[r.reference]])
    return questions


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
