"""Features of a shapes-world image for the world's Fréchet distance: what the exact detector reads, plus
pixel statistics no learned model is involved in.

Why these and not a network's embedding: the world's RL reward (world-clip) is itself a learned image
encoder, and a student trained against it can drift in directions a similar encoder does not see. These
features come from the renderer's own definitions (palette, background, shape templates), so they
cannot be optimised through the reward, and each one is readable: a rising distance comes with the
features that moved (`feature_drift`). The Fréchet distance compares covariances as well as means, so
it rises when diversity collapses (every scene laid out alike, one colour favoured) even while each
image stays correct, which is how reward hacking usually starts; pixel coverage and background
statistics catch the other usual symptoms (off-palette colours, noise, tints, blur).

Units are fixed so that one unit is a change worth noticing; they do not depend on the images compared:

    count_<shape>, count_<colour>  detections accepted by the world's rule (score > 0.3) (1 = one object)
    fragments                      detections at or below 0.3 (blobs that are not clean shapes)
    score                          mean score of the kept detections x 10 (purity x template fit)
    side_mean, side_std            box side (sqrt of box area) as a fraction of the image side x 10
    x_mean, y_mean, x_std, y_std   box centres as fractions of the image side x 10 (0.5 x 10 with no objects)
    background, off_palette        fraction of pixels at the background colour / at no colour, x 20
    background_noise               mean RGB distance of background pixels from the background colour / 10
"""

from __future__ import annotations

import numpy as np

from .detect import ACCEPT_SCORE, MAX_COLOR_DISTANCE, detect_objects, segment_colors
from .scene import BACKGROUND, COLORS, SHAPES

KEPT_SCORE = ACCEPT_SCORE  # the world's one acceptance rule (world/detect.py)
BACKGROUND_RADIUS = 40.0  # RGB distance within which a pixel counts as background (palette colours are >= 143 away)

FEATURE_NAMES: tuple[str, ...] = (
    *(f"count_{shape}" for shape in SHAPES), *(f"count_{color}" for color in COLORS), "fragments", "score",
    "side_mean", "side_std", "x_mean", "y_mean", "x_std", "y_std", "background", "off_palette", "background_noise",
)


def world_features(image: np.ndarray) -> np.ndarray:
    """The feature vector (len(FEATURE_NAMES),) of one H x W x 3 uint8 image."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    detections = detect_objects(image)
    kept = [d for d in detections if d["score"] > KEPT_SCORE]
    counts = [sum(d["class"] == s for d in kept) for s in SHAPES] + [sum(d["color"] == c for d in kept) for c in COLORS]
    boxes = np.array([d["box"] for d in kept], dtype=np.float64).reshape(-1, 4)
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / max(height, width)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 / width
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 / height

    pixels = image.astype(np.float64)
    colors, _ = segment_colors(pixels, MAX_COLOR_DISTANCE)
    distance = np.linalg.norm(pixels - np.asarray(BACKGROUND, dtype=np.float64), axis=-1)
    background = distance <= BACKGROUND_RADIUS
    off_palette = (colors < 0) & ~background

    def mean(values: np.ndarray, empty: float) -> float:
        return float(values.mean()) if values.size else empty

    def std(values: np.ndarray) -> float:
        return float(values.std()) if values.size else 0.0

    return np.array([
        *counts,
        len(detections) - len(kept),
        10 * mean(np.array([d["score"] for d in kept]), 0.0),
        10 * mean(sides, 0.0), 10 * std(sides),
        10 * mean(centre_x, 0.5), 10 * mean(centre_y, 0.5), 10 * std(centre_x), 10 * std(centre_y),
        20 * background.mean(), 20 * off_palette.mean(),
        mean(distance[background], 0.0) / 10,
    ], dtype=np.float64)


def feature_matrix(images) -> np.ndarray:
    """(n, d) features of n images."""
    return np.stack([world_features(image) for image in images]) if len(images) else np.zeros((0, len(FEATURE_NAMES)))


def feature_drift(generated: np.ndarray, real: np.ndarray, top: int = 3) -> list[dict]:
    """The features whose means moved most (in their units), largest first: where a distance comes from."""
    moved = generated.mean(axis=0) - real.mean(axis=0)
    order = np.argsort(-np.abs(moved))[:top]
    return [{"feature": FEATURE_NAMES[i], "generated": round(float(generated[:, i].mean()), 4),
             "real": round(float(real[:, i].mean()), 4)} for i in order if moved[i] != 0]
