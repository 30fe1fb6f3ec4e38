"""What a shapes-world scene is, and how to lay one out so that it says what its prompt says.

The world: flat-coloured circles, squares and upward triangles on a dark grey background, with no
anti-aliasing, so an exact detector (detect.py) can read a clean image back pixel for pixel.

Colours are far apart in RGB (closest pair: blue and purple, 139 apart; every colour is >= 143 from the
background), so colour noise of tens of levels cannot turn one colour into another.

Resolution (16, 24 or 32 px square; 32 by default) fixes how big shapes are and how many fit:

    size  shape side (px)  objects at most
     16       5 - 6              2
     24       5 - 8              4
     32       6 - 10             4

Five pixels is the smallest side at which the three rasterised shapes stay distinct (they fill 21, 17
and 25 pixels, and any two differ in at least 4); at 4 px a circle is a square without its corner
pixels and a triangle is two stacked bars.

Objects keep a gap of >= 2 px between them (1 px is enough for connected components on clean images;
the second pixel keeps slightly blurred model samples apart) and 1 px from the border. Four objects
at 16 px would fill the canvas as a 2x2 grid with two pixels of play, every scene alike, so scenes at
16 px (counting included) stop at two objects.

Placement is random wherever the prompt is silent: colours it does not name, sizes and positions.
Relations are GenEval's (geometry.py), so a sampled "A left of B" always passes the benchmark's check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DmdrError
from .geometry import RELATIONS, relation_holds

SHAPES = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 50, 200),
    "white": (245, 245, 245),
}
COLORS = tuple(PALETTE)
BACKGROUND = (48, 48, 48)

SUPPORTED_SIZES = (16, 24, 32)
DEFAULT_SIZE = 32
SHAPE_SIDES = {16: (5, 6), 24: (5, 8), 32: (6, 10)}  # inclusive range of a shape's side in pixels
MAX_OBJECTS = {16: 2, 24: 4, 32: 4}
GAP = 2  # empty pixels between any two objects
MARGIN = 1  # empty pixels between an object and the image border


class LayoutError(DmdrError):
    """A scene that cannot be laid out at the requested resolution."""


def check_size(size: int) -> int:
    if size not in SUPPORTED_SIZES:
        raise DmdrError(f"shapes-world resolution {size} is not supported; use one of {SUPPORTED_SIZES}")
    return size


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt asks for; a colour of None means 'any colour'."""

    shape: str
    color: str | None = None

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise DmdrError(f"the shapes world has no {self.shape!r}; its shapes are {', '.join(SHAPES)}")
        if self.color is not None and self.color not in PALETTE:
            raise DmdrError(
                f"the shapes world has no colour {self.color!r}; its colours are {', '.join(COLORS)}"
            )


@dataclass(frozen=True)
class Relation:
    """Object `subject` stands in `relation` to object `reference` (indices into SceneSpec.objects)."""

    subject: int
    relation: str
    reference: int


@dataclass(frozen=True)
class SceneSpec:
    """Everything a scene must show; anything not stated here is drawn at random."""

    objects: tuple[ObjectSpec, ...]
    relations: tuple[Relation, ...] = ()

    def __post_init__(self):
        n = len(self.objects)
        for r in self.relations:
            if r.relation not in RELATIONS:
                raise DmdrError(f"unknown relation {r.relation!r}; expected one of {', '.join(RELATIONS)}")
            if not (0 <= r.subject < n and 0 <= r.reference < n) or r.subject == r.reference:
                raise DmdrError(f"relation {r} must link two different objects among {n}")


@dataclass(frozen=True)
class SceneObject:
    """A placed object: a `side` x `side` box whose top-left pixel is (x, y)."""

    shape: str
    color: str
    x: int
    y: int
    side: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) with exclusive right/bottom edges, as the detector reports boxes."""
        return (float(self.x), float(self.y), float(self.x + self.side), float(self.y + self.side))


def sample_layout(
    spec: SceneSpec, size: int, rng: np.random.Generator, attempts: int = 1000
) -> list[SceneObject]:
    """Random colours, sides and positions that honour `spec`: no overlaps, every relation holds.

    Objects are placed one at a time, each uniformly among the positions that keep the gap and the
    relations with those already placed; a dead end restarts the scene with fresh sides. Restarts are
    cheap (~0.2 ms), and every GenEval scene succeeds in at least one attempt in five.
    """
    check_size(size)
    n = len(spec.objects)
    if n > MAX_OBJECTS[size]:
        raise LayoutError(
            f"a {size} px scene holds at most {MAX_OBJECTS[size]} objects, this one asks for {n}"
        )
    colors = [o.color if o.color is not None else str(rng.choice(COLORS)) for o in spec.objects]
    low, high = SHAPE_SIDES[size]
    for _ in range(attempts):
        sides = rng.integers(low, high + 1, size=n)
        boxes: list[np.ndarray] = []
        for k in range(n):
            candidates = _candidate_boxes(int(sides[k]), size)
            allowed = np.ones(len(candidates), dtype=bool)
            for placed in boxes:
                allowed &= _keeps_gap(candidates, placed)
            for r in spec.relations:
                if r.subject == k and r.reference < k:
                    allowed &= relation_holds(r.relation, candidates, boxes[r.reference])
                elif r.reference == k and r.subject < k:
                    allowed &= relation_holds(r.relation, boxes[r.subject], candidates)
            choices = np.flatnonzero(allowed)
            if len(choices) == 0:
                break
            boxes.append(candidates[rng.choice(choices)])
        else:
            return [
                SceneObject(o.shape, color, int(box[0]), int(box[1]), int(side))
                for o, color, box, side in zip(spec.objects, colors, boxes, sides)
            ]
    raise LayoutError(f"found no {size} px layout for {spec} in {attempts} attempts")


def _candidate_boxes(side: int, size: int) -> np.ndarray:
    """Every in-bounds box of this side, as an (N, 4) array of x0, y0, x1, y1."""
    starts = np.arange(MARGIN, size - MARGIN - side + 1)
    ys, xs = np.meshgrid(starts, starts, indexing="ij")
    x0, y0 = xs.ravel(), ys.ravel()
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def _keeps_gap(candidates: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """Candidates separated from `placed` by at least GAP empty pixels along some axis."""
    apart_x = (candidates[:, 2] + GAP <= placed[0]) | (placed[2] + GAP <= candidates[:, 0])
    apart_y = (candidates[:, 3] + GAP <= placed[1]) | (placed[3] + GAP <= candidates[:, 1])
    return apart_x | apart_y
