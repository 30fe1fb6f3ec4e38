"""Rasterise shapes-world scenes: flat colours, no anti-aliasing, one exact mask per shape and box size.

`shape_mask` is also the detector's template, so what the renderer draws and what the detector expects
can never drift apart.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np

from .scene import BACKGROUND, PALETTE, SHAPES, SceneObject, check_size


@lru_cache(maxsize=None)
def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """The filled pixels of `shape` stretched to a width x height box (read-only bool array, H x W).

    Circle: pixel centres within (side - 1) / 2 + 0.3 of the box centre (an ellipse if the box is not
    square). That radius always reaches the middle pixels of each side, and cuts more than a single
    corner pixel off even sides (with side / 2, a 6 px circle is a square missing its four corners).
    Square: every pixel. Triangle: apex up, base on the bottom row; each row is centred and widens
    linearly from 1 px (2 for even widths) to the full width. Every mask touches all four sides of its
    box, so the detector recovers boxes exactly.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    if shape == "circle":
        radius_x, radius_y = (width - 1) / 2 + 0.3, (height - 1) / 2 + 0.3
        mask = ((xs - width / 2) / radius_x) ** 2 + ((ys - height / 2) / radius_y) ** 2 <= 1
    elif shape == "square":
        mask = np.ones((height, width), dtype=bool)
    else:
        rows_below_apex = np.arange(height)[:, None]
        inset = np.floor((width - 1) / 2 * (height - 1 - rows_below_apex) / max(height - 1, 1))
        columns = np.arange(width)[None, :]
        mask = (columns >= inset) & (columns < width - inset)
    mask = np.ascontiguousarray(mask, dtype=bool)
    mask.setflags(write=False)
    return mask


def render_scene(objects: Iterable[SceneObject], size: int) -> np.ndarray:
    """A size x size x 3 uint8 image of `objects` on the background."""
    check_size(size)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        window = image[obj.y : obj.y + obj.side, obj.x : obj.x + obj.side]
        window[shape_mask(obj.shape, obj.side, obj.side)] = PALETTE[obj.color]
    return image
