"""GenEval's image folder layout, and the loop that scores a folder with any detector.

Layout (GenEval, Ghosh et al. 2023, MIT): one folder per prompt, `<root>/00000/metadata.jsonl` holding
that prompt's metadata as one JSON object, and its samples as `<root>/00000/samples/0000.png, ...`.
The official scorer takes every digit-named folder and every `<digits>.png` in its samples/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import DmdrError
from .geneval_prompts import GENEVAL_VOCABULARY, Vocabulary, validate_metadata
from .geneval_score import ColorClassifier, Detection, image_result

Detector = Callable[[Image.Image], list[Detection]]
# Given the image being scored, a colour classifier for its detections (e.g. ClipColorClassifier.for_image).
ColorClassifierFactory = Callable[[Image.Image], ColorClassifier]

_SAMPLE_NAME = re.compile(r"\d+\.png")


@dataclass(frozen=True)
class PromptEntry:
    index: int
    folder: Path
    metadata: dict
    samples: tuple[Path, ...]


def prompt_folder(root: str | Path, index: int) -> Path:
    return Path(root) / f"{index:05d}"


def sample_path(root: str | Path, index: int, sample: int) -> Path:
    return prompt_folder(root, index) / "samples" / f"{sample:04d}.png"


def write_prompt_folders(root: str | Path, records: Sequence[dict]) -> list[Path]:
    """Create `<root>/<index>/metadata.jsonl` and an empty samples/ for every record; returns the folders."""
    folders = []
    for index, record in enumerate(records):
        folder = prompt_folder(root, index)
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
        folders.append(folder)
    return folders


def save_samples(root: str | Path, index: int, images: Sequence[Image.Image]) -> list[Path]:
    paths = []
    for sample, image in enumerate(images):
        path = sample_path(root, index, sample)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        paths.append(path)
    return paths


def _number(path: Path) -> int:
    return int(path.name.split(".")[0])


def read_prompt_folders(root: str | Path, vocabulary: Vocabulary = GENEVAL_VOCABULARY) -> list[PromptEntry]:
    """Every prompt folder under `root`, in index order, with validated metadata and sorted sample paths."""
    base = Path(root)
    if not base.is_dir():
        raise DmdrError(f"GenEval image folder {str(base)!r} does not exist")
    entries = []
    for folder in sorted((p for p in base.iterdir() if p.is_dir() and p.name.isdigit()), key=_number):
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            raise DmdrError(f"GenEval prompt folder {str(folder)!r} has no metadata.jsonl")
        try:
            record = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DmdrError(f"GenEval metadata {meta_path}: is not one valid JSON object ({e})") from None
        metadata = validate_metadata(record, str(meta_path), vocabulary)
        samples = [p for p in (folder / "samples").glob("*.png") if _SAMPLE_NAME.fullmatch(p.name)]
        entries.append(PromptEntry(int(folder.name), folder, metadata, tuple(sorted(samples, key=_number))))
    if not entries:
        raise DmdrError(f"GenEval image folder {str(base)!r} has no prompt folders (00000/, 00001/, ...)")
    return entries


def evaluate_folder(root: str | Path, detect: Detector, color_classifier: ColorClassifierFactory | None = None,
                    vocabulary: Vocabulary = GENEVAL_VOCABULARY) -> list[dict]:
    """Score every sample: one record per image in the official results.jsonl form (`image_result`), ready
    for `geneval_score.summarize`. A prompt folder without samples is an error, not a silent skip."""
    results = []
    for entry in read_prompt_folders(root, vocabulary):
        if not entry.samples:
            raise DmdrError(f"GenEval prompt folder {str(entry.folder)!r} has no samples "
                            f"(samples/0000.png, ...)")
        for path in entry.samples:
            # The official scorer applies EXIF orientation before cropping colour patches.
            with Image.open(path) as raw:
                image = ImageOps.exif_transpose(raw).convert("RGB")
            classify = color_classifier(image) if color_classifier is not None else None
            results.append(image_result(path, entry.metadata, detect(image), classify))
    return results
