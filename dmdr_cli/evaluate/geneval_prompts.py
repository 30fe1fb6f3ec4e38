"""GenEval prompts: the published generation procedure, and a validating reader for the official file.

Facts from GenEval (Ghosh et al. 2023, MIT; `prompts/create_prompts.py`, `prompts/object_names.txt`):
80 COCO classes under GenEval's names, 10 colours, 4 relations, six tasks drawn from one
`numpy.random.default_rng(seed)` in a fixed order (every class once for single_object, then 100 draws
for each other task), duplicates dropped. With seed 43 that yields the published 553 prompts
(80/99/80/94/100/100). This module makes the same draws in the same order, so seed 43 gives the same
objects, counts, colours and relations as the published set (checked against published examples in the
tests), worded as the published file words them: GenEval's plural rule adds "es" after a final "s" and
"s" otherwise, so its counting prompts read "two sheeps", "three persons", "four knifes" (8 of the 553
prompts). Those texts are what the published models were prompted with, so they are the default;
`plural_style="english"` ("two sheep", "three people") is an opt-in that departs from the benchmark.
The set is still reported as generated: the official file is the reference when the user has it.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import DmdrError
from ..runtime.files import read_bytes

# COCO's 80 instance classes in COCO id order, named as GenEval names them ("mouse", "remote" and
# "keyboard" become "computer mouse", "tv remote", "computer keyboard").
CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# COCO's own names for the renamed three, as detectors trained on COCO label them.
COCO_RENAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}

# Task sizes of the published set (GenEval paper, Table 1); generation follows file order.
TASK_COUNTS: dict[str, int] = {
    "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100,
}
TASKS: tuple[str, ...] = tuple(TASK_COUNTS)
OFFICIAL_SEED = 43

PluralStyle = Literal["english", "official"]


@dataclass(frozen=True)
class Vocabulary:
    """The classes and colours metadata may name: GenEval's, or another benchmark's in GenEval's format
    (the shapes world reuses the format and the scorer with its own classes and colours)."""
    classes: tuple[str, ...]
    colors: tuple[str, ...]


GENEVAL_VOCABULARY = Vocabulary(CLASSES, COLORS)

# English plurals that a suffix rule gets wrong, keyed by the last word of a class name.
_IRREGULAR_PLURALS = {
    "person": "people", "mouse": "mice", "knife": "knives",
    "sheep": "sheep", "broccoli": "broccoli",  # same in the plural
    "skis": "skis", "scissors": "scissors",  # already plural nouns
}


def with_article(word: str) -> str:
    """GenEval's rule: "an" before a vowel letter (right for all 80 classes and 10 colours)."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def plural(name: str, style: PluralStyle = "official") -> str:
    """Plural of a class name. "official" is GenEval's suffix rule (+es after s, else +s), which writes
    "sheeps", "persons", "skises"; "english" gives "sheep", "people", "skis", "computer mice"."""
    if style == "official":
        return name + ("es" if name.endswith("s") else "s")
    head, _, last = name.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        last = _IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}" if head else last


# ---------------------------------------------------------------------------------------------------
# Generation: one record per draw, in GenEval's order of draws.

def _single_object(a: str) -> dict:
    return {"tag": "single_object", "include": [{"class": a, "count": 1}], "prompt": f"a photo of {with_article(a)}"}


def _two_object(a: str, b: str) -> dict:
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}


def _counting(a: str, n: int, style: PluralStyle) -> dict:
    # exclude n + 1 makes the count exact: at least n and fewer than n + 1.
    return {"tag": "counting", "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}],
            "prompt": f"a photo of {NUMBER_WORDS[n]} {plural(a, style)}"}


def _colors(a: str, color: str) -> dict:
    return {"tag": "colors", "include": [{"class": a, "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(color)} {a}"}


def _position(a: str, relation: str, b: str) -> dict:
    # The reference object B comes first; A's position points at include index 0.
    return {"tag": "position",
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
            "prompt": f"a photo of {with_article(a)} {relation} {with_article(b)}"}


def _color_attr(a: str, color_a: str, b: str, color_b: str) -> dict:
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": color_a}, {"class": b, "count": 1, "color": color_b}],
            "prompt": f"a photo of {with_article(color_a)} {a} and {with_article(color_b)} {b}"}


def _not_person(draw: int) -> str:
    """Map a draw from range(79) to a class other than "person" (GenEval has no "<colour> person" prompts)."""
    return CLASSES[(draw + 1 + CLASSES.index("person")) % len(CLASSES)]


def generate_geneval_metadata(seed: int = OFFICIAL_SEED, draws_per_task: int = 100,
                              plural_style: PluralStyle = "official") -> list[dict]:
    """GenEval's procedure: all classes once, `draws_per_task` draws for each other task, exact duplicates
    dropped. The draw order is part of the procedure (it decides which prompts a seed gives)."""
    rng = np.random.default_rng(seed)
    n_cls, n_col = len(CLASSES), len(COLORS)
    records = [_single_object(CLASSES[i]) for i in rng.choice(n_cls, size=n_cls, replace=False)]
    for _ in range(draws_per_task):
        a, b = rng.choice(n_cls, size=2, replace=False)
        records.append(_two_object(CLASSES[a], CLASSES[b]))
    for _ in range(draws_per_task):
        a = rng.choice(n_cls)
        n = int(rng.integers(2, 4, endpoint=True))
        records.append(_counting(CLASSES[a], n, plural_style))
    for _ in range(draws_per_task):
        a = _not_person(rng.choice(n_cls - 1))
        records.append(_colors(a, COLORS[rng.choice(n_col)]))
    for _ in range(draws_per_task):
        a, b = rng.choice(n_cls, size=2, replace=False)
        records.append(_position(CLASSES[a], RELATIONS[rng.choice(len(RELATIONS))], CLASSES[b]))
    for _ in range(draws_per_task):
        a, b = (_not_person(d) for d in rng.choice(n_cls - 1, size=2, replace=False))
        ca, cb = rng.choice(n_col, size=2, replace=False)
        records.append(_color_attr(a, COLORS[ca], b, COLORS[cb]))
    return _deduplicated(records)


def _deduplicated(records: list[dict]) -> list[dict]:
    seen: set[str] = set()
    unique = []
    for record in records:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


# ---------------------------------------------------------------------------------------------------
# Validation and the official file.

_RECORD_KEYS = {"tag", "include", "exclude", "prompt"}
_INCLUDE_KEYS = {"class", "count", "color", "position"}
_EXCLUDE_KEYS = {"class", "count"}


def _fail(where: str, what: str) -> DmdrError:
    return DmdrError(f"GenEval metadata {where}: {what}")


def _suggest(value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in COCO_RENAMES and COCO_RENAMES[value] in choices:
        return f" (did you mean {COCO_RENAMES[value]!r}?)"
    close = difflib.get_close_matches(str(value), choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_requirement(req: object, field: str, index: int, allowed: set[str], vocabulary: Vocabulary,
                       where: str) -> dict:
    name = f"{field}[{index}]"
    if not isinstance(req, dict):
        raise _fail(where, f"{name} must be an object like {{\"class\": \"dog\", \"count\": 1}}")
    unknown = sorted(set(req) - allowed)
    if unknown:
        raise _fail(where, f"{name} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    cls = req.get("class")
    if cls not in vocabulary.classes:
        raise _fail(where, f"{name}.class {cls!r} is not one of the {len(vocabulary.classes)} known classes"
                           f"{_suggest(cls, vocabulary.classes)}")
    count = req.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise _fail(where, f"{name}.count must be a positive integer, got {count!r}")
    out = {"class": cls, "count": count}
    if "color" in req:
        if req["color"] not in vocabulary.colors:
            raise _fail(where, f"{name}.color {req['color']!r} is not one of {list(vocabulary.colors)}")
        out["color"] = req["color"]
    if "position" in req:
        pos = req["position"]
        ok_shape = isinstance(pos, (list, tuple)) and len(pos) == 2
        if not ok_shape or pos[0] not in RELATIONS:
            raise _fail(where, f"{name}.position must be [relation, include index] with relation one of "
                               f"{list(RELATIONS)}, got {pos!r}")
        target = pos[1]
        # The scorer resolves the target among includes already checked, so it must come earlier.
        if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < index:
            raise _fail(where, f"{name}.position index {target!r} must point at an earlier include (0..{index - 1})")
        out["position"] = [pos[0], target]
    return out


def validate_metadata(record: object, where: str, vocabulary: Vocabulary = GENEVAL_VOCABULARY) -> dict:
    """Check one GenEval metadata record; return a normalised copy or raise DmdrError naming `where`."""
    if not isinstance(record, dict):
        raise _fail(where, f"must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - _RECORD_KEYS)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(_RECORD_KEYS)}")
    tag = record.get("tag")
    if tag not in TASKS:
        raise _fail(where, f"tag {tag!r} is not a GenEval task {list(TASKS)}{_suggest(tag, TASKS)}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail(where, "prompt must be a non-empty string")
    include = record.get("include")
    if not isinstance(include, list) or not include:
        raise _fail(where, "include must be a non-empty list of {class, count, ...} objects")
    out = {"tag": tag, "include": [_check_requirement(r, "include", i, _INCLUDE_KEYS, vocabulary, where)
                                   for i, r in enumerate(include)]}
    if "exclude" in record:
        exclude = record["exclude"]
        if not isinstance(exclude, list):
            raise _fail(where, "exclude must be a list of {class, count} objects")
        out["exclude"] = [_check_requirement(r, "exclude", i, _EXCLUDE_KEYS, vocabulary, where)
                          for i, r in enumerate(exclude)]
    out["prompt"] = prompt
    return out


def load_geneval_metadata(path: str | Path) -> list[dict]:
    """Read GenEval's `evaluation_metadata.jsonl` (one JSON object per line), validating every line."""
    p = Path(path)
    if not os.path.lexists(p):
        raise DmdrError(f"GenEval metadata file {str(p)!r} does not exist: give the path of the official "
                        f"evaluation_metadata.jsonl (GenEval repository, prompts/)")
    raw = read_bytes(p, f"GenEval metadata file {str(p)!r}",
                     fix="give the path of the official evaluation_metadata.jsonl")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DmdrError(f"GenEval metadata file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(where, f"is not valid JSON ({e.msg} at column {e.colno})") from None
        records.append(validate_metadata(obj, where))
    if not records:
        raise DmdrError(f"GenEval metadata file {str(p)!r} has no records")
    return records


def geneval_prompt_set(metadata_path: str | Path | None = None, seed: int = OFFICIAL_SEED,
                       plural_style: PluralStyle = "official") -> tuple[list[dict], str]:
    """(metadata records, where they came from): the official file when given, else the generated set."""
    if metadata_path is not None:
        if plural_style != "official":
            raise DmdrError("English plurals reword the generated GenEval prompts: the official file "
                            "(--geneval-metadata) keeps its own texts; drop --geneval-english-plurals")
        return load_geneval_metadata(metadata_path), f"official file {metadata_path}"
    records = generate_geneval_metadata(seed=seed, plural_style=plural_style)
    if plural_style == "official":
        return records, f"generated by GenEval's procedure (seed {seed}, GenEval's own plurals: \"two sheeps\")"
    return records, (f"generated by GenEval's procedure (seed {seed}) with English plurals (\"two sheep\"): "
                     f"NOT the official prompt texts, not comparable with published GenEval numbers")
