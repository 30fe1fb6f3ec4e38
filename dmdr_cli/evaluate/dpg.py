"""DPG-Bench scoring with a pluggable VQA model.

Protocol (DPG-Bench from ELLA, Hu et al. 2024, Apache-2.0; `dpg_bench/compute_dpg_bench.py`):
each prompt's 4 samples form one 2x2 grid image named `<item_id>.png`; every tile gets every question;
an answer scores 1 only when it is "yes"; in CSV order, a question whose parent proposition scored 0
is set to 0; tile score = mean over questions, image score = mean over tiles, DPG-Bench = 100 x mean
over prompts. Categories pool the unmasked answers of each image's last tile, per question.

The defaults are the official arithmetic, so that a number is comparable with the papers' tables:
- the official script skips the first CSV row (`if i == 0: continue` in `prepare_dpg_data`), so that
  proposition is never asked, and a prompt whose question then depends on it raises a KeyError inside
  the script's per-image `try` and drops out of every mean (the published overall is on 1,064 of the
  1,065 prompts). `all_rows=True` asks every row: corrected, NOT official.
- an answer scores 1 only when it is exactly "yes" (`answer == 'yes'`). mPLUG, the official VQA model,
  answers a bare lower-case "yes"/"no". `lenient_yes=True` (NOT official) also counts answers that are
  "yes" once surrounding whitespace, case and one trailing period are ignored ("Yes.", " YES "), which
  chat-style VQA models tend to write; "yes, there is" still does not count.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DmdrError
from ..runtime.files import read_bytes

AnswerFn = Callable[[Image.Image, str], str]

REQUIRED_COLUMNS = ("item_id", "text", "proposition_id", "dependency", "tuple", "question_natural_language")


@dataclass(frozen=True)
class DpgQuestion:
    proposition_id: int
    parents: tuple[int, ...]  # parent proposition ids in CSV order; "0" (no parent) is left out
    tuple_text: str  # e.g. "entity - whole (bicycle)"
    question: str

    @property
    def category(self) -> str:
        """Detailed category, e.g. "entity - whole": the tuple up to its "("."""
        return self.tuple_text.split("(")[0].strip()

    @property
    def broad_category(self) -> str:
        """entity, attribute, relation, global or other: the detailed category up to its "-"."""
        return self.category.split("-")[0].strip()


@dataclass(frozen=True)
class DpgItem:
    item_id: str
    prompt: str
    questions: tuple[DpgQuestion, ...]


class MissingParentError(Exception):
    """A question depends on a proposition that is not in the item (only the skipped first row can be)."""


# ---------------------------------------------------------------------------------------------------
# The CSV.

def _parse_int(value: str, column: str, where: str) -> int:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        raise DmdrError(f"DPG-Bench CSV {where}: {column} {value!r} is not an integer") from None


def load_dpg_csv(path: str | Path, all_rows: bool = False) -> list[DpgItem]:
    """Items in CSV order, questions in CSV order; DmdrError naming the line for anything malformed.
    The first question row is left out, as the official script leaves it out, unless `all_rows`."""
    p = Path(path)
    if not os.path.lexists(p):
        raise DmdrError(f"DPG-Bench CSV {str(p)!r} does not exist: it is not shipped with dmdr; get dpg_bench.csv "
                        f"from ELLA's repository (dpg_bench/dpg_bench.csv) and pass its path")
    raw = read_bytes(p, f"DPG-Bench CSV {str(p)!r}", fix="pass the path of dpg_bench.csv")
    try:
        with io.StringIO(raw.decode("utf-8-sig"), newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DmdrError(f"DPG-Bench CSV {str(p)!r} lacks column(s) {missing}; found {reader.fieldnames}")
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as e:
        raise DmdrError(f"DPG-Bench CSV {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DmdrError(f"DPG-Bench CSV {str(p)!r} does not parse as CSV ({e})") from None
    skipped = None
    if not all_rows and rows:
        line, row = rows.pop(0)
        pid = _parse_int(row["proposition_id"], "proposition_id", f"{p} line {line}")
        skipped = (row["item_id"].strip(), pid)
    items = _group_rows(p, rows, skipped)
    if not items:
        raise DmdrError(f"DPG-Bench CSV {str(p)!r} has no question rows")
    return items


def _group_rows(p: Path, rows: list[tuple[int, dict]], skipped: tuple[str, int] | None) -> list[DpgItem]:
    prompts: dict[str, str] = {}
    questions: dict[str, list[DpgQuestion]] = {}
    lines: dict[tuple[str, int], int] = {}
    for line, row in rows:
        where = f"{p} line {line}"
        if any(row.get(c) is None for c in REQUIRED_COLUMNS):
            raise DmdrError(f"DPG-Bench CSV {where}: has fewer fields than the header")
        item_id = row["item_id"].strip()
        question = row["question_natural_language"].strip()
        if not item_id or not question or not row["tuple"].strip():
            raise DmdrError(f"DPG-Bench CSV {where}: item_id, tuple and question_natural_language must be non-empty")
        pid = _parse_int(row["proposition_id"], "proposition_id", where)
        if (item_id, pid) in lines:
            raise DmdrError(f"DPG-Bench CSV {where}: item {item_id!r} repeats proposition {pid} "
                            f"(first at line {lines[item_id, pid]})")
        lines[item_id, pid] = line
        parents = tuple(d for d in (_parse_int(x, "dependency", where) for x in row["dependency"].split(",")) if d)
        prompts.setdefault(item_id, row["text"])
        questions.setdefault(item_id, []).append(DpgQuestion(pid, parents, row["tuple"].strip(), question))
    for item_id, qs in questions.items():
        known = {q.proposition_id for q in qs}
        for q in qs:
            for parent in q.parents:
                if parent not in known and (item_id, parent) != skipped:
                    raise DmdrError(f"DPG-Bench CSV {p} line {lines[item_id, q.proposition_id]}: item {item_id!r} "
                                    f"proposition {q.proposition_id} depends on {parent}, which the item lacks")
    return [DpgItem(item_id, prompts[item_id], tuple(qs)) for item_id, qs in questions.items()]


# ---------------------------------------------------------------------------------------------------
# Grids.

def make_grid(images: Sequence[Image.Image], rows: int = 2, cols: int = 2) -> Image.Image:
    """Tiles row-major (left to right, then top to bottom) into one image; all tiles the same size."""
    if len(images) != rows * cols:
        raise ValueError(f"a {rows}x{cols} grid needs {rows * cols} images, got {len(images)}")
    width, height = images[0].size
    if any(im.size != (width, height) for im in images):
        raise ValueError(f"grid tiles differ in size: {sorted({im.size for im in images})}")
    grid = Image.new("RGB", (cols * width, rows * height))
    for k, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((k % cols) * width, (k // cols) * height))
    return grid


def split_grid(image: Image.Image, rows: int = 2, cols: int = 2) -> list[Image.Image]:
    """Inverse of make_grid: top-left, top-right, bottom-left, bottom-right for 2x2 (the official order)."""
    if image.width % cols or image.height % rows:
        raise DmdrError(f"grid image of {image.width}x{image.height} px does not split into {rows}x{cols} equal tiles")
    w, h = image.width // cols, image.height // rows
    return [image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r in range(rows) for c in range(cols)]


# ---------------------------------------------------------------------------------------------------
# Scoring.

def is_yes(answer: str, lenient: bool = False) -> bool:
    """The official test, `answer == "yes"`; `lenient` (not official) first strips whitespace, lower-cases
    and drops one trailing period."""
    if not lenient:
        return answer == "yes"
    text = answer.strip().lower()
    return (text[:-1] if text.endswith(".") else text) == "yes"


def mask_dependencies(item: DpgItem, raw: Mapping[int, float]) -> dict[int, float]:
    """Zero every question that has a parent scoring 0, in CSV order, so zeros propagate down chains."""
    scores = dict(raw)
    for q in item.questions:
        for parent in q.parents:
            if parent not in scores:
                raise MissingParentError(f"item {item.item_id!r}: proposition {q.proposition_id} "
                                         f"depends on missing proposition {parent}")
            if scores[parent] == 0:
                scores[q.proposition_id] = 0.0
                break
    return scores


@dataclass(frozen=True)
class TileScore:
    raw: dict[int, float]  # 1.0 for "yes", per proposition id
    masked: dict[int, float]
    score: float
    answers: dict[int, str] = field(default_factory=dict)  # the VQA's text, per proposition id


def score_tile(item: DpgItem, tile: Image.Image, answer: AnswerFn, lenient_yes: bool = False) -> TileScore:
    answers = {q.proposition_id: answer(tile, q.question) for q in item.questions}
    raw = {pid: float(is_yes(text, lenient_yes)) for pid, text in answers.items()}
    masked = mask_dependencies(item, raw)
    return TileScore(raw, masked, sum(masked.values()) / len(masked), answers)


@dataclass(frozen=True)
class ImageScore:
    score: float  # mean over tiles, 0..1
    tiles: tuple[TileScore, ...]


def score_image(item: DpgItem, grid: Image.Image, answer: AnswerFn, rows: int = 2, cols: int = 2,
                lenient_yes: bool = False) -> ImageScore:
    tiles = tuple(score_tile(item, tile, answer, lenient_yes) for tile in split_grid(grid, rows, cols))
    return ImageScore(float(np.mean([t.score for t in tiles])), tiles)


@dataclass
class DpgReport:
    score: float  # DPG-Bench: 100 x mean image score over the scored prompts
    per_item: dict[str, float]  # image score, 0..1
    categories: dict[str, float]  # broad category -> 100 x mean unmasked last-tile answer
    subcategories: dict[str, float]  # detailed category -> same
    dropped: list[str] = field(default_factory=list)  # prompts the official script loses (first row skipped)
    answers: list[dict] = field(default_factory=list)  # one per question and tile of the scored prompts

    @property
    def n_prompts(self) -> int:
        return len(self.per_item)


def evaluate_dpg(items: Sequence[DpgItem], images: Mapping[str, Image.Image | str | Path], answer: AnswerFn,
                 rows: int = 2, cols: int = 2, lenient_yes: bool = False) -> DpgReport:
    """Score every item's grid image (`images[item_id]`, an image or a path)."""
    per_item: dict[str, float] = {}
    broad: dict[str, list[float]] = {}
    detailed: dict[str, list[float]] = {}
    dropped: list[str] = []
    answers: list[dict] = []
    for item in items:
        grid = _open(images[item.item_id])
        try:
            result = score_image(item, grid, answer, rows, cols, lenient_yes)
        except MissingParentError:
            dropped.append(item.item_id)
            continue
        per_item[item.item_id] = result.score
        answers += _answer_records(item, result)
        last = result.tiles[-1].raw
        for q in item.questions:
            broad.setdefault(q.broad_category, []).append(last[q.proposition_id])
            detailed.setdefault(q.category, []).append(last[q.proposition_id])
    if not per_item:
        raise DmdrError("DPG-Bench: no prompt could be scored")
    return DpgReport(
        score=100 * float(np.mean(list(per_item.values()))),
        per_item=per_item,
        categories={c: 100 * float(np.mean(v)) for c, v in broad.items()},
        subcategories={c: 100 * float(np.mean(v)) for c, v in sorted(detailed.items())},
        dropped=dropped,
        answers=answers,
    )


def _answer_records(item: DpgItem, result: ImageScore) -> list[dict]:
    """The per-question answers of one prompt (tile 0 = top left, row-major), as dpg_answers.jsonl holds them."""
    return [{"item_id": item.item_id, "tile": k, "proposition_id": q.proposition_id, "question": q.question,
             "answer": tile.answers[q.proposition_id], "yes": tile.raw[q.proposition_id],
             "masked": tile.masked[q.proposition_id]}
            for k, tile in enumerate(result.tiles) for q in item.questions]


def _open(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as im:
        return im.convert("RGB")


def grid_image_paths(root: str | Path, items: Sequence[DpgItem]) -> dict[str, Path]:
    """`<root>/<item_id>.png` for every item; DmdrError listing the first missing ones."""
    base = Path(root)
    paths = {item.item_id: base / f"{item.item_id}.png" for item in items}
    missing = [item_id for item_id, path in paths.items() if not path.is_file()]
    if missing:
        raise DmdrError(f"DPG-Bench image folder {str(base)!r} lacks {len(missing)} of {len(paths)} grid images "
                        f"(first: {', '.join(missing[:3])}); expected <item_id>.png, a 2x2 grid of 4 samples")
    return paths
