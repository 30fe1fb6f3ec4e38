"""GenEval's correctness rules on detections, independent of the detector that made them.

Rules from GenEval (Ghosh et al. 2023, MIT; `evaluation/evaluate_images.py` and `summary_scores.py`),
with the official defaults: score threshold 0.3 (0.9 for counting prompts), at most 16 detections per
class, no extra NMS, position margin 0.1. Per-image records take the form of the official
`results.jsonl` (see `image_result`), so the official `summary_scores.py` reads them as they are.

A detection is a dict:
    {"class": str (a GenEval class name), "score": float, "box": (x0, y0, x1, y1) in pixels,
     optional "color": str (already classified), optional "mask": HxW bool array}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .geneval_prompts import CLASSES, COLORS

Detection = dict
# Colours of the given detections (all of class `classname`), one per detection, in order.
ColorClassifier = Callable[[Sequence[Detection], str], list[str]]

SCORE_THRESHOLD = 0.3
COUNTING_SCORE_THRESHOLD = 0.9
MAX_PER_CLASS = 16
POSITION_MARGIN = 0.1


def kept_detections(detections: Iterable[Detection], tag: str,
                    counting_threshold: float = COUNTING_SCORE_THRESHOLD,
                    score_threshold: float = SCORE_THRESHOLD) -> dict[str, list[Detection]]:
    """Per class, the detections that count: score above the task's threshold, best first, at most 16.
    The thresholds are GenEval's 0.3 and 0.9 unless a detector with differently calibrated scores says otherwise."""
    threshold = counting_threshold if tag == "counting" else score_threshold
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        if det["score"] > threshold:
            by_class.setdefault(det["class"], []).append(det)
    return {cls: sorted(dets, key=lambda d: -d["score"])[:MAX_PER_CLASS] for cls, dets in by_class.items()}


def relative_position(box_a: Sequence[float], box_b: Sequence[float]) -> set[str]:
    """Relations of box A to box B. Each axis's centre offset is shrunk by 0.1 x (sum of the two boxes'
    extents on that axis) so that overlapping or adjacent objects relate to nothing; the shrunk offset,
    divided by the unshrunk offset's length, must exceed 0.5 on an axis (within 60 degrees of it, so a
    diagonal offset holds two relations)."""
    a = np.asarray(box_a[:4], dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b[:4], dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    size_a, size_b = np.abs(a[1] - a[0]), np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - POSITION_MARGIN * (size_a + size_b), 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:  # image y grows downward
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _color_order(color: str) -> tuple[int, str]:
    """GenEval's colour order first (as its reasons list them), then any other colour by name."""
    return (COLORS.index(color) if color in COLORS else len(COLORS), color)


def _colors_of(dets: Sequence[Detection], classname: str, classify: ColorClassifier | None) -> list[str]:
    missing = [d for d in dets if "color" not in d]
    if missing and classify is None:
        raise ValueError(f"{len(missing)} {classname} detection(s) carry no 'color' and no colour classifier was given")
    found = iter(classify(missing, classname) if missing else [])
    return [d["color"] if "color" in d else next(found) for d in dets]


def score_image(metadata: Mapping, detections: Iterable[Detection],
                classify_color: ColorClassifier | None = None,
                counting_threshold: float = COUNTING_SCORE_THRESHOLD,
                score_threshold: float = SCORE_THRESHOLD) -> tuple[bool, str]:
    """(correct, reason) for one image: includes are ANDed, excludes ORed; colour and position are judged
    on the top-`count` detections only, and position only once class and colour passed."""
    objects = kept_detections(detections, metadata["tag"], counting_threshold, score_threshold)
    correct = True
    reasons: list[str] = []
    used: list[list[Detection] | None] = []  # per include: the detections it matched, None if it failed
    for req in metadata["include"]:
        cls, count = req["class"], req["count"]
        found = objects.get(cls, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        if matched and "color" in req:
            colors = _colors_of(found, cls, classify_color)
            hits = colors.count(req["color"])
            if hits < count:
                matched = False
                others = ", ".join(f"{colors.count(c)} {c}" for c in sorted(set(colors), key=_color_order))
                reasons.append(f"expected {req['color']} {cls}>={count}, found {hits} {req['color']}; and {others}")
        if matched and "position" in req:
            relation, target = req["position"]
            matched, why = _check_position(found, used[target], cls, relation)
            if not matched:
                reasons.append(why)
        correct &= matched
        used.append(found if matched else None)
    for req in metadata.get("exclude", []):
        present = len(objects.get(req["class"], []))
        if present >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {present}")
    return correct, "\n".join(reasons)


def _check_position(found: list[Detection], targets: list[Detection] | None, cls: str,
                    relation: str) -> tuple[bool, str]:
    if targets is None:
        return False, f"no target for {cls} to be {relation}"
    for det in found:
        for target in targets:
            actual = relative_position(det["box"], target["box"])
            if relation not in actual:
                # The official wording, also when nothing relates: "found  target" (two spaces).
                return False, f"expected {cls} {relation} target, found {' and '.join(sorted(actual))} target"
    return True, ""


def summarize(results: Iterable[Mapping]) -> dict[str, float]:
    """Per-task accuracy over images ({"tag", "correct"} records) and "overall", the mean of the task
    scores (GenEval's headline number), tasks in order of first appearance."""
    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["tag"], []).append(bool(r["correct"]))
    if not per_task:
        raise ValueError("no GenEval results to summarize")
    scores = {tag: float(np.mean(flags)) for tag, flags in per_task.items()}
    scores["overall"] = float(np.mean(list(scores.values())))
    return scores


def summary_counts(results: Iterable[Mapping]) -> dict[str, float | int]:
    """The lines above the task breakdown of GenEval's `summary_scores.py`: images, prompts (distinct
    `metadata` strings, which the official script groups by), the fraction of correct images (over all
    images, not averaged per task) and of correct prompts: prompts with AT LEAST ONE correct image
    (`groupby('metadata')['correct'].any()` there), not prompts whose images are all correct."""
    any_correct: dict[str, bool] = {}
    flags = []
    for r in results:
        flags.append(bool(r["correct"]))
        any_correct[r["metadata"]] = any_correct.get(r["metadata"], False) or bool(r["correct"])
    if not flags:
        raise ValueError("no GenEval results to summarize")
    return {"images": len(flags), "prompts": len(any_correct), "correct_images": float(np.mean(flags)),
            "correct_prompts": float(np.mean(list(any_correct.values())))}


def image_result(filename: str | Path, metadata: Mapping, detections: Iterable[Detection],
                 classify_color: ColorClassifier | None = None,
                 counting_threshold: float = COUNTING_SCORE_THRESHOLD) -> dict:
    """One line of the official `results.jsonl` (`evaluate_images.py`): filename, tag, prompt, correct,
    reason, metadata (the prompt's metadata as a JSON string) and details (a JSON string of
    {class: [[x0, y0, x1, y1, score], ...]}: the detections kept, best first, classes in COCO order)."""
    detections = list(detections)
    correct, reason = score_image(metadata, detections, classify_color, counting_threshold)
    kept = kept_detections(detections, metadata["tag"], counting_threshold)
    order = sorted(kept, key=lambda c: (CLASSES.index(c) if c in CLASSES else len(CLASSES), c))
    details = {c: [[*map(float, d["box"][:4]), float(d["score"])] for d in kept[c]] for c in order}
    return {"filename": str(filename), "tag": metadata["tag"], "prompt": metadata["prompt"], "correct": bool(correct),
            "reason": reason, "metadata": json.dumps(metadata), "details": json.dumps(details)}


RESULT_KEYS = ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")


def write_results_jsonl(path: Path, results: Iterable[Mapping]) -> Path:
    """The per-image records as the official `results.jsonl` (one JSON object per line, official keys only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: r[k] for k in RESULT_KEYS}) + "\n" for r in results), encoding="utf-8")
    return path


def prompt_units(unit_of_image: Sequence[str], results: Sequence[Mapping]) -> dict[str, list]:
    """{prompt unit: [tag, fraction of its images correct]} from per-image records in the same order as
    `unit_of_image`: what `dmdr evaluate --compare` pairs across two reports (GenEval's overall is then the
    mean over tasks of the mean over each task's prompts)."""
    from .paired import unit_means

    tags = {unit: r["tag"] for unit, r in zip(unit_of_image, results, strict=True)}
    return unit_means(tags, unit_of_image, [r["correct"] for r in results])
