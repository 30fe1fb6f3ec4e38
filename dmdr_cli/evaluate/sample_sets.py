"""The image sets `dmdr sample` writes, each in the folder layout its evaluator expects.

    prompts  (--prompt / --prompts)  <out>/00003_01.png: image 1 of prompt 3
    geneval                          GenEval's: <out>/00000/metadata.jsonl + <out>/00000/samples/0000.png (4 per prompt)
    dpg                              DPG-Bench's: <out>/<item_id>.png, a 2x2 grid of 4 samples (tiles in <out>/tiles/)

Every folder also gets `samples.jsonl`, one row per image ({file, prompt, seed, steps, nfe, model, ...}),
and `sample_settings.json`: a second run into the same folder must have the same settings, and then
skips the images already there. Images are written under a temporary name and renamed, so a killed
run leaves no half-written PNG behind to be mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DmdrError
from ..runtime import files
from .dpg import load_dpg_csv, make_grid
from .geneval_folder import sample_path, write_prompt_folders
from .geneval_prompts import geneval_prompt_set

SETTINGS_FILE = "sample_settings.json"
SAMPLES_FILE = "samples.jsonl"
GRID_FILE = "grid.png"
DPG_TILES = 4
GENEVAL_PER_PROMPT = 4  # GenEval's protocol


@dataclass(frozen=True)
class Job:
    prompt_index: int
    image_index: int
    prompt: str
    file: str  # relative to the output folder


class SampleSet:
    """Prompts, images per prompt, and where each image goes."""

    kind = "prompts"

    def __init__(self, prompts: list[str], per_prompt: int, source: str):
        if not prompts:
            raise DmdrError(f"no prompts to sample in {source}")
        self.prompts, self.per_prompt, self.source = prompts, per_prompt, source

    def file(self, prompt_index: int, image_index: int) -> str:
        return f"{prompt_index:05d}_{image_index:02d}.png"

    def jobs(self) -> list[Job]:
        return [Job(p, i, prompt, self.file(p, i)) for p, prompt in enumerate(self.prompts)
                for i in range(self.per_prompt)]

    def fingerprint(self) -> str:
        """What the image files depend on besides the model: the set, its prompts and images per prompt."""
        digest = hashlib.sha1(json.dumps([self.kind, self.prompts, self.per_prompt]).encode()).hexdigest()
        return digest[:16]

    def prepare(self, out: Path) -> None:
        """Files an evaluator reads besides the images (written before sampling, main process only)."""

    def finish(self, out: Path) -> None:
        """Whatever is assembled from finished images (main process, after every image exists)."""

    def extra_row(self, job: Job) -> dict:
        return {}


class GenEvalSet(SampleSet):
    kind = "geneval"

    def __init__(self, records: list[dict], per_prompt: int, source: str):
        super().__init__([r["prompt"] for r in records], per_prompt, source)
        self.records = records

    def file(self, prompt_index: int, image_index: int) -> str:
        return sample_path(".", prompt_index, image_index).as_posix()

    def prepare(self, out: Path) -> None:
        write_prompt_folders(out, self.records)

    def extra_row(self, job: Job) -> dict:
        return {"tag": self.records[job.prompt_index]["tag"]}


class DpgSet(SampleSet):
    kind = "dpg"

    def __init__(self, item_ids: list[str], prompts: list[str], source: str,
                 prepare: Callable[[Path], None] | None = None):
        super().__init__(prompts, DPG_TILES, source)
        self.item_ids, self._prepare = item_ids, prepare  # prepare: a domain's own files (its items)

    def file(self, prompt_index: int, image_index: int) -> str:
        return f"tiles/{self.item_ids[prompt_index]}_{image_index}.png"

    def prepare(self, out: Path) -> None:
        if self._prepare is not None:
            self._prepare(out)

    def finish(self, out: Path) -> None:
        for p, item_id in enumerate(self.item_ids):
            grid = out / f"{item_id}.png"
            if grid.is_file():
                continue
            tiles = []
            for i in range(DPG_TILES):
                with Image.open(out / self.file(p, i)) as tile:
                    tiles.append(tile.convert("RGB"))
            save_atomic(make_grid(tiles), grid)  # top-left, top-right, bottom-left, bottom-right

    def extra_row(self, job: Job) -> dict:
        return {"item_id": self.item_ids[job.prompt_index]}


# ---------------------------------------------------------------------------------------------------
# Building a set from the command line's choices.

def prompt_set(prompts: list[str], source: str, per_prompt: int, num_prompts: int | None = None) -> SampleSet:
    return SampleSet(_first(prompts, num_prompts), per_prompt, _described(source, prompts, num_prompts))


def geneval_set(*, size: int, per_prompt: int, metadata: str | Path | None = None, num_prompts: int | None = None,
                english_plurals: bool = False, domain=None) -> GenEvalSet:
    """GenEval's prompts (the official metadata, or GenEval's procedure), or a domain's own (evaluate/domains.py)."""
    if domain is not None:
        return domain.geneval_set(size, per_prompt, num_prompts)
    records, source = geneval_prompt_set(metadata, plural_style="english" if english_plurals else "official")
    source = _described(source, records, num_prompts)
    return GenEvalSet(_first(records, num_prompts), per_prompt, source)


def dpg_set(*, size: int, csv: str | Path | None = None, num_prompts: int | None = None, domain=None) -> DpgSet:
    """DPG-Bench's prompts from its CSV, or a domain's own dense items (evaluate/domains.py)."""
    if domain is not None:
        return domain.dpg_set(size, num_prompts)
    if csv is None:
        raise DmdrError("--bench dpg needs DPG-Bench's prompts: pass --dpg-csv PATH (dpg_bench.csv from ELLA's "
                        "repository, dpg_bench/dpg_bench.csv; it is not shipped with dmdr)")
    every = load_dpg_csv(csv, all_rows=True)  # every prompt gets a grid, whatever the scoring then skips
    items, source = _first(every, num_prompts), _described(f"DPG-Bench CSV {csv}", every, num_prompts)
    return DpgSet([i.item_id for i in items], [i.prompt for i in items], source)


def _first(values: list, n: int | None) -> list:
    return values if n is None else values[:n]


def _described(source: str, values: list, n: int | None) -> str:
    return source if n is None or n >= len(values) else f"first {n} of {len(values)}: {source}"


# ---------------------------------------------------------------------------------------------------
# Files.

def save_atomic(image: Image.Image, path: Path) -> None:
    """A PNG that appears whole or not at all; a failed write (disk full) removes its temporary file and is one
    line (the images already written stay: the same command resumes)."""
    with files.cleanup_on_failure(what="image", target=path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_file(path, "image") as tmp:
        image.save(tmp, format="PNG")


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> an 8-bit RGB image (round to nearest, as diffusers' numpy_to_pil)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def check_settings(out: Path, settings: dict) -> None:
    """Refuse an --out holding other samples; a folder made with the same settings is resumed."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DmdrError(f"--out {out} is a file: give a folder for the images")
    saved_file = out / SETTINGS_FILE
    if not saved_file.is_file():
        if any(out.iterdir()):
            raise DmdrError(f"--out {out} exists, is not empty and holds no {SETTINGS_FILE}: it is not a `dmdr sample` "
                            f"folder; choose another --out")
        return
    saved = files.read_json(saved_file, kind=dict, fix="delete the folder to start over")
    for key in sorted(set(saved) | set(settings)):
        if saved.get(key) != settings.get(key):
            raise DmdrError(f"--out {out} holds samples made with {key}={saved.get(key)!r}, not {settings.get(key)!r}: "
                            f"choose another --out, or delete it to start over")


def write_settings(out: Path, settings: dict) -> None:
    with files.cleanup_on_failure(what="--out", target=out):
        out.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True) + "\n",
                            what="the sample settings", fsync=False)


def read_settings(folder: Path) -> dict:
    path = Path(folder) / SETTINGS_FILE
    if not os.path.lexists(path):
        return {}
    return files.read_json(path, kind=dict, fix="the folder is damaged: re-run `dmdr sample` into a new folder")


def write_samples_jsonl(out: Path, sample_set: SampleSet, jobs: list[Job], row: dict) -> None:
    """One row per image: its file, prompt and the settings it was drawn with."""
    lines = []
    for job in jobs:
        record = {"file": job.file, "prompt": job.prompt, **row, "prompt_index": job.prompt_index,
                  "image_index": job.image_index, **sample_set.extra_row(job)}
        lines.append(json.dumps(record) + "\n")
    files.write_text_atomic(out / SAMPLES_FILE, "".join(lines), what=SAMPLES_FILE, fsync=False)


def read_samples_jsonl(folder: Path) -> list[dict]:
    path = Path(folder) / SAMPLES_FILE
    if not path.is_file():
        raise DmdrError(f"{folder} has no {SAMPLES_FILE}: score a folder written by `dmdr sample` (it lists each "
                        f"image with its prompt), or give --model to sample one")
    fix = "re-run `dmdr sample` into the folder to rewrite it"
    rows = files.read_jsonl(path, fix=fix)
    bad = next((i for i, row in enumerate(rows, 1) if not isinstance(row.get("file"), str)
                or not isinstance(row.get("prompt"), str)), None)
    if bad is not None:
        raise DmdrError(f"{path} row {bad} has no \"file\" and \"prompt\" text: {fix}")
    if not rows:
        raise DmdrError(f"{path} lists no images")
    return rows


def write_grid(folder: Path, rows: list[dict], path: Path, max_prompts: int = 8, max_images: int = 8) -> Path | None:
    """A PNG of the first prompts' images, one row per prompt (a look at the set, not an evaluation input);
    None when the images differ in size."""
    groups = sample_groups(rows, max_prompts, max_images)
    grid = grid_of(Path(folder), groups) if groups else None
    if grid is None:
        return None
    save_atomic(grid, path)
    return path


def sample_groups(rows: list[dict], max_prompts: int, max_images: int) -> list[list[dict]]:
    """samples.jsonl rows grouped by prompt, in prompt order, each group in image order."""
    by_prompt: dict = {}
    for row in rows:
        by_prompt.setdefault(row.get("prompt_index", row["prompt"]), []).append(row)
    groups = [sorted(group, key=lambda r: r.get("image_index", 0))[:max_images] for group in by_prompt.values()]
    return groups[:max_prompts]


def grid_of(folder: Path, groups: list[list[dict]]) -> Image.Image | None:
    """One row per group of samples.jsonl rows (blank tiles pad short rows); None if image sizes differ."""
    from ..dmd.validation import grid_image

    cols = max(len(group) for group in groups)
    tiles = []
    for group in groups:
        images = [load_tensor(folder / row["file"]) for row in group]
        tiles += images + [torch.ones_like(images[0])] * (cols - len(images))
    if len({t.shape for t in tiles}) > 1:
        return None
    return viewable(grid_image(torch.stack(tiles), cols=cols), tiles[0].shape[-1])


def viewable(grid: Image.Image, tile_width: int, min_tile: int = 96) -> Image.Image:
    """Tiny tiles (the shapes world's 24 px) enlarged with nearest-neighbour, so a grid can be looked at."""
    factor = max(1, min_tile // max(tile_width, 1))
    return grid if factor == 1 else grid.resize((grid.width * factor, grid.height * factor), Image.NEAREST)


def load_tensor(path: Path) -> torch.Tensor:
    array = np.asarray(files.open_image(path))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
