"""Scenes, geometry and rendering: determinism, layout guarantees, exact masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dmdr_cli.errors import DmdrError
from dmdr_cli.evaluate.geneval_score import relative_position
from dmdr_cli.world.geometry import relation_holds, relations_between
from dmdr_cli.world.render import render_scene, shape_mask
from dmdr_cli.world.scene import (
    BACKGROUND,
    GAP,
    MARGIN,
    MAX_OBJECTS,
    PALETTE,
    SHAPE_SIDES,
    SHAPES,
    SUPPORTED_SIZES,
    LayoutError,
    ObjectSpec,
    Relation,
    SceneSpec,
    sample_layout,
)


def _spec(*shapes: str, relations=()) -> SceneSpec:
    return SceneSpec(tuple(ObjectSpec(s) for s in shapes), tuple(relations))


def test_palette_is_separable_exactly():
    colours = np.array([*PALETTE.values(), BACKGROUND], dtype=float)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2)]
    assert min(distances) > 120


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_same_seed_same_scene_and_image(size):
    spec = _spec("circle", "square", relations=[Relation(0, "left of", 1)])
    first = sample_layout(spec, size, np.random.default_rng(7))
    again = sample_layout(spec, size, np.random.default_rng(7))
    other = sample_layout(spec, size, np.random.default_rng(8))
    assert first == again
    assert np.array_equal(render_scene(first, size), render_scene(again, size))
    assert first != other


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_layouts_keep_gap_margin_and_side_range(size):
    rng = np.random.default_rng(0)
    low, high = SHAPE_SIDES[size]
    for _ in range(50):
        objects = sample_layout(_spec(*rng.choice(SHAPES, MAX_OBJECTS[size])), size, rng)
        for obj in objects:
            assert low <= obj.side <= high
            assert MARGIN <= obj.x and obj.x + obj.side <= size - MARGIN
            assert MARGIN <= obj.y and obj.y + obj.side <= size - MARGIN
        for a, b in itertools.combinations(objects, 2):
            gap_x = max(b.x - (a.x + a.side), a.x - (b.x + b.side))
            gap_y = max(b.y - (a.y + a.side), a.y - (b.y + b.side))
            assert max(gap_x, gap_y) >= GAP


def test_layout_honours_relations_and_refuses_what_does_not_fit():
    rng = np.random.default_rng(1)
    for relation in ("left of", "right of", "above", "below"):
        a, b = sample_layout(_spec("circle", "triangle", relations=[Relation(0, relation, 1)]), 16, rng)
        assert relation in relations_between(a.box, b.box)
    with pytest.raises(LayoutError):
        sample_layout(_spec("circle", "circle", "circle"), 16, rng)
    with pytest.raises(DmdrError):
        ObjectSpec("dog")
    with pytest.raises(DmdrError):
        sample_layout(_spec("circle"), 20, rng)


def test_geneval_position_rule():
    left, right = (0, 0, 4, 4), (10, 0, 14, 4)
    assert relations_between(left, right) == {"left of"}
    assert relations_between(right, left) == {"right of"}
    assert relations_between((0, 0, 4, 4), (0, 10, 4, 14)) == {"above"}
    assert relations_between((10, 10, 14, 14), (0, 0, 4, 4)) == {"right of", "below"}  # diagonal: both
    assert relations_between((0, 0, 4, 4), (0.5, 0, 4.5, 4)) == set()  # shrunk offset vanishes
    # Mostly vertical offset: not "left of" although A's centre is further left.
    assert relations_between((0, 0, 4, 4), (3, 12, 7, 16)) == {"above"}
    candidates = np.array([left, right, (0, 10, 4, 14)])
    assert relation_holds("left of", candidates, right).tolist() == [True, False, True]


def test_position_rule_matches_the_geneval_scorer():
    corners = np.random.default_rng(0).integers(0, 32, size=(2000, 2, 2)).astype(float)
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1) + 1], axis=1)
    for a, b in zip(boxes[::2], boxes[1::2]):
        assert relations_between(a, b) == relative_position(a, b)


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_fill_their_box_and_differ(shape):
    for side in range(5, 11):
        mask = shape_mask(shape, side, side)
        assert mask.any(axis=0).all() and mask.any(axis=1).all()  # the box is recoverable
        assert np.array_equal(mask, mask[:, ::-1])  # left-right symmetric
        for other in SHAPES:
            if other != shape:
                assert (mask != shape_mask(other, side, side)).sum() >= 4


def test_render_draws_flat_palette_colours_only():
    rng = np.random.default_rng(2)
    objects = sample_layout(_spec("circle", "square", "triangle", "circle"), 32, rng)
    image = render_scene(objects, 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    present = {tuple(int(v) for v in p) for p in image.reshape(-1, 3)}
    assert present == {BACKGROUND} | {PALETTE[o.color] for o in objects}
    for obj in objects:
        window = image[obj.y : obj.y + obj.side, obj.x : obj.x + obj.side]
        painted = (window == PALETTE[obj.color]).all(axis=-1)
        assert np.array_equal(painted, shape_mask(obj.shape, obj.side, obj.side))
