"""GenEval's position rule, shared by the scene sampler (which must satisfy it) and the judges.

Boxes are (x0, y0, x1, y1) in pixels with exclusive right/bottom edges; image y grows downward. With
centres cA, cB and box sizes, `offset = cA - cB`, each axis is shrunk by 0.1 (sizeA + sizeB) towards 0,
and the result is divided by the length of the *unshrunk* offset. "left of" means dx < -0.5, "right
of" dx > 0.5, "above" dy < -0.5, "below" dy > 0.5; two boxes whose shrunk offset vanishes stand in no
relation. A pair may hold two relations at once (a diagonal offset is both "left of" and "above").

Every function broadcasts over leading dimensions, so the sampler can test all candidate positions in
one call.
"""

from __future__ import annotations

import numpy as np

RELATIONS = ("left of", "right of", "above", "below")
POSITION_THRESHOLD = 0.1  # fraction of the summed box sizes that an offset must exceed (GenEval)

_AXIS_AND_SIGN = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


def _normalised_offset(box_a, box_b) -> tuple[np.ndarray, np.ndarray]:
    """GenEval's revised offset of A from B divided by the raw offset's length, and a 'no relation' mask."""
    a = np.asarray(box_a, dtype=np.float64)
    b = np.asarray(box_b, dtype=np.float64)
    offset = (a[..., :2] + a[..., 2:]) / 2 - (b[..., :2] + b[..., 2:]) / 2
    sizes = (a[..., 2:] - a[..., :2]) + (b[..., 2:] - b[..., :2])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * sizes, 0) * np.sign(offset)
    length = np.linalg.norm(offset, axis=-1, keepdims=True)
    unrelated = np.all(np.abs(revised) < 1e-3, axis=-1)
    return revised / np.where(length > 0, length, 1.0), unrelated


def relation_holds(relation: str, box_a, box_b) -> np.ndarray:
    """Whether A stands in `relation` to B (GenEval's rule); broadcasts over leading dimensions."""
    if relation not in _AXIS_AND_SIGN:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    axis, sign = _AXIS_AND_SIGN[relation]
    direction, unrelated = _normalised_offset(box_a, box_b)
    return (sign * direction[..., axis] > 0.5) & ~unrelated


def relations_between(box_a, box_b) -> set[str]:
    """All relations in which one box A stands to one box B, e.g. {"left of", "above"}."""
    return {relation for relation in RELATIONS if bool(relation_holds(relation, box_a, box_b))}
