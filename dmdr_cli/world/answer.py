"""Answering the shapes world's DPG-style questions (dense.py) from its detections (detect.py).

The detector stands in for DPG-Bench's VQA model: each question's `check` is answered yes or no.
(For GenEval the detections go straight to evaluate/geneval_score.py: they carry class, colour, box
and score, as that module expects, so the detector also replaces Mask2Former and the CLIP colour
classifier there.)
"""

from __future__ import annotations

from ..errors import DmdrError
from .detect import ACCEPT_SCORE
from .geometry import relation_holds

MIN_SCORE = ACCEPT_SCORE  # the world's one acceptance rule (detect.py)


def answer(check: dict, detections: list[dict], min_score: float = MIN_SCORE) -> bool:
    """Whether the image whose `detections` these are makes a question's `check` true."""
    kept = [d for d in detections if d["score"] > min_score]
    kind = check["kind"]
    if kind == "exists":
        return any(d["class"] == check["class"] for d in kept)
    if kind == "count":
        return sum(d["class"] == check["class"] for d in kept) == check["count"]
    if kind == "color":
        return any(d["class"] == check["class"] and d["color"] == check["color"] for d in kept)
    if kind == "relation":
        subjects = [d for d in kept if _fits(d, check["subject"])]
        references = [d for d in kept if _fits(d, check["reference"])]
        return any(
            s is not r and bool(relation_holds(check["relation"], s["box"], r["box"]))
            for s in subjects
            for r in references
        )
    raise DmdrError(f"unknown question check kind {kind!r}; expected exists, count, color or relation")


def answer_questions(
    questions: list[dict], detections: list[dict], min_score: float = MIN_SCORE
) -> dict[int, bool]:
    """Each question's raw answer, by proposition id (what DPG's category breakdown uses)."""
    return {q["proposition_id"]: answer(q["check"], detections, min_score) for q in questions}


def apply_dependencies(questions: list[dict], answers: dict[int, bool]) -> dict[int, bool]:
    """DPG-Bench's masking: in question order, a question with a parent answered "no" becomes "no".

    Like DPG-Bench's script, masking overwrites as it goes, so a "no" travels down a chain of
    dependencies (parents always precede their children here).
    """
    masked = dict(answers)
    for q in questions:
        if not all(masked[parent] for parent in q["dependency"]):
            masked[q["proposition_id"]] = False
    return masked


def _fits(detection: dict, description: dict) -> bool:
    """A description names a class and, optionally, a colour."""
    wanted_color = description.get("color", detection["color"])
    return detection["class"] == description["class"] and detection["color"] == wanted_color
