"""The benchmarks of the built-in shapes world, scored exactly: world-GenEval, world-DPG and world-distance.

- world-GenEval: GenEval-format prompts of the world (`world.prompts.generate_prompts`, 4 images each),
  read by the exact detector (`world.detect.detect_objects`, which also names colours) and judged by the
  same rules as GenEval (`evaluate.geneval_score`).
- world-DPG: the world's dense items (`world.dense`), each question answered from the detector's
  reading of a tile (`world.answer`); dependency masking, tile / image / prompt means and the category
  breakdown are DPG-Bench's own code (`evaluate.dpg`), with the detector standing in for the VQA model.
- world-distance: the Fréchet distance between the features (world/features.py) of generated images and
  of real renders of the same prompts (`world.prompts.render_for`, `world.dense.render_dense`), the
  render of image i drawn from `numpy.random.default_rng([seed, i])`.

`world_metrics(images, entries)` gives all three for in-memory images (the training engine calls it);
the `*_folder` functions read what `dmdr sample` wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DmdrError
from .answer import answer
from .builtin_prompts import (
    EVAL_SEED, PROMPT_SIZE, VAL_DENSE, VAL_GENEVAL, VAL_SEED, evaluation_dense_items, validation_dense_items,
)
from .dense import generate_dense_prompts, render_dense
from .detect import ACCEPT_SCORE, accepted, detect_objects
from .prompts import TASKS, generate_prompts, render_for
from .scene import COLORS, SHAPES, check_size
from ..evaluate.dpg import DpgItem, DpgQuestion, DpgReport, evaluate_dpg, make_grid
from ..evaluate.frechet import frechet_between
from ..evaluate.geneval_folder import read_prompt_folders
from ..evaluate.geneval_prompts import Vocabulary
from ..evaluate.geneval_score import prompt_units, score_image, summarize
from ..evaluate.paired import unit_key, unit_means
from .features import feature_drift, feature_matrix

WORLD_VOCABULARY = Vocabulary(SHAPES, COLORS)
GENEVAL_PROMPTS = 553  # GenEval's size
DPG_ITEMS = VAL_DENSE
ITEMS_FILE = "items.jsonl"  # the dense items of a world-DPG folder
DETECTOR = "shapes-world exact detector (world/detect.py: colour segmentation + shape templates)"


# ---------------------------------------------------------------------------------------------------
# Prompt sets.

def world_geneval_metadata(size: int, n: int | None = None) -> tuple[list[dict], str]:
    """(metadata, description): builtin:world-val's GenEval-style prompts (seed 1) that fit `size` px."""
    n = GENEVAL_PROMPTS if n is None else n
    records = generate_prompts(n, seed=VAL_SEED, size=check_size(size))
    return records, f"shapes-world GenEval prompts (generate_prompts: {n}, seed {VAL_SEED}, {size} px)"


def world_dpg_items(size: int, n: int | None = None) -> tuple[list[dict], str]:
    """(dense items, description): builtin:world-val's held-out dense items where they fit, else a fresh draw."""
    n = DPG_ITEMS if n is None else n
    if check_size(size) >= PROMPT_SIZE and n <= len(validation_dense_items()):
        return list(validation_dense_items()[:n]), f"shapes-world dense items (builtin:world-val, first {n})"
    items = generate_dense_prompts(n, seed=VAL_SEED, size=size)
    source = f"shapes-world dense items (generate_dense_prompts: {n}, seed {VAL_SEED}, {size} px; may overlap training)"
    return items, source


# The frozen evaluation (docs/results.md, "The frozen evaluator") and the cheap validation set. One entry per
# image; each carries "unit", the prompt it belongs to: the paired bootstrap resamples units, not images.
EVAL_PER_TASK, EVAL_IMAGES_PER_PROMPT, EVAL_DPG_ITEMS = 100, 2, 48
VAL_PER_TASK, VAL_DPG_ITEMS = 20, 12
DPG_TILES = 4


def evaluation_entries(size: int) -> list[dict]:
    """The evaluation set: 100 GenEval-style prompts per task (seed EVAL_SEED) x 2 images, then 48 held-out
    dense items x 4 tiles (1,392 images). Small pools repeat (3 single-object prompts at 24 px): each
    repeat is its own unit, with its own noise."""
    size = _prompt_size(size)
    geneval = [m for task in TASKS for m in generate_prompts(EVAL_PER_TASK, seed=EVAL_SEED, tasks=[task], size=size)]
    dense = (evaluation_dense_items(EVAL_DPG_ITEMS) if size == PROMPT_SIZE
             else generate_dense_prompts(EVAL_DPG_ITEMS, seed=EVAL_SEED, size=size))
    return _with_units(geneval, EVAL_IMAGES_PER_PROMPT, dense)


def validation_entries(size: int, per_task: int = VAL_PER_TASK, dense_items: int = VAL_DPG_ITEMS) -> list[dict]:
    """The validation set, a subset of builtin:world-val: its first `per_task` GenEval-style prompts of each
    task x 1 image, then its first `dense_items` dense items x 4 tiles (168 images by default). Knobs are
    chosen on these."""
    size = _prompt_size(size)
    pool = generate_prompts(VAL_GENEVAL, seed=VAL_SEED, size=size)
    geneval = [m for task in TASKS for m in [r for r in pool if r["tag"] == task][:per_task]]
    return _with_units(geneval, 1, world_dpg_items(size, dense_items)[0])


def _prompt_size(size: int) -> int:
    """The builtin sets are drawn for 24 px scenes, which fit every larger world too."""
    return min(check_size(size), PROMPT_SIZE)


def _with_units(geneval: list[dict], images_per_prompt: int, dense) -> list[dict]:
    entries = [dict(m, unit=f"{m['tag']}/{k:03d}") for k, m in enumerate(geneval) for _ in range(images_per_prompt)]
    return entries + [dict(item, unit=item["item_id"]) for item in dense for _ in range(DPG_TILES)]


def is_world_metadata(records: Sequence[dict]) -> bool:
    """GenEval-format metadata naming the world's shapes rather than COCO classes."""
    classes = {req["class"] for record in records for req in record.get("include", [])}
    return bool(classes) and classes <= set(SHAPES)


# ---------------------------------------------------------------------------------------------------
# Scoring images.

def as_uint8(image) -> np.ndarray:
    """H x W x 3 uint8 from a PIL image, a uint8 array, or a (3, H, W) / (H, W, 3) float tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.dtype != np.uint8:
        if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
            array = array.transpose(1, 2, 0)
        array = np.clip(np.round(array.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return array


def geneval_results(images: Sequence[np.ndarray], metadata: Sequence[dict],
                    files: Sequence[str] | None = None) -> list[dict]:
    """One record per image, as the official GenEval evaluator writes them to results.jsonl:
    {"file", "tag", "prompt", "correct", "reason", "detections"} (the accepted detections, best first; the
    same acceptance rule for every task, world/detect.py). `file` is None for in-memory images."""
    results = []
    for k, (image, meta) in enumerate(zip(images, metadata, strict=True)):
        found = accepted(detect_objects(image))
        correct, reason = score_image(meta, found, counting_threshold=ACCEPT_SCORE, score_threshold=ACCEPT_SCORE)
        results.append({"file": None if files is None else str(files[k]), "tag": meta["tag"], "prompt": meta["prompt"],
                        "correct": bool(correct), "reason": reason,
                        "detections": [{key: d[key] for key in ("class", "color", "box", "score")} for d in found]})
    return results


def write_geneval_images(folder: Path, images, entries: Sequence[dict], records: Sequence[dict]) -> None:
    """Each GenEval-style image as folder/images/<its index in the evaluation set>.png, its verdict's "file"
    set to that path (relative to folder), so results.jsonl can be audited image by image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    indices = [i for i, entry in enumerate(entries) if "tag" in entry]
    if len(indices) != len(records):
        raise ValueError(f"{len(records)} verdicts for {len(indices)} GenEval-style images")
    for record, i in zip(records, indices):
        name = f"images/{i:04d}.png"
        Image.fromarray(as_uint8(images[i])).save(folder / name)
        record["file"] = name


def write_results(path: Path, records: Sequence[dict]) -> None:
    """Per-image verdicts, one JSON object a line (GenEval's results.jsonl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def as_dpg_item(item: dict) -> DpgItem:
    """A world dense item in DPG-Bench's terms (its category is the prefix of the tuple text)."""
    questions = tuple(
        DpgQuestion(q["proposition_id"], tuple(q["dependency"]),
                    f"{q['category']} - {q['check']['kind']} ({q['question'].rstrip('?')})", q["question"])
        for q in item["questions"])
    return DpgItem(item["item_id"], item["prompt"], questions)


class DetectorVQA:
    """DPG-Bench's `answer(image, question)` for world questions: the question's check, read from the exact
    detector's detections of the tile (detected once per tile, not once per question)."""

    def __init__(self, items: Sequence[dict]):
        self.checks: dict[str, dict] = {}
        for item in items:
            for q in item["questions"]:
                known = self.checks.setdefault(q["question"], q["check"])
                if known != q["check"]:
                    raise ValueError(f"question {q['question']!r} has two different checks: {known} and {q['check']}")
        self._tile: Image.Image | None = None
        self._detections: list[dict] = []

    def __call__(self, image: Image.Image, question: str) -> str:
        if image is not self._tile:
            self._tile, self._detections = image, detect_objects(as_uint8(image))
        return "yes" if answer(self.checks[question], self._detections) else "no"


def dpg_report(items: Sequence[dict], grids: dict[str, Image.Image | str | Path], rows: int = 2,
               cols: int = 2) -> DpgReport:
    """DPG-Bench scoring (evaluate.dpg) of world items, one rows x cols grid image per item id."""
    return evaluate_dpg([as_dpg_item(item) for item in items], grids, DetectorVQA(items), rows, cols)


def dpg_summary(report: DpgReport) -> dict:
    return {"overall": report.score, **{c: v for c, v in sorted(report.categories.items())}}


def reference_renders(entries: Sequence[dict], size: int, seed: int = 0) -> list[np.ndarray]:
    """A real render for each entry (GenEval metadata or a dense item): entry i from default_rng([seed, i])."""
    return [render_entry(entry, np.random.default_rng([seed, i]), size) for i, entry in enumerate(entries)]


def render_entry(entry: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random scene (size x size x 3 uint8) that satisfies GenEval metadata or a dense item."""
    render = render_dense if "questions" in entry else render_for
    return render(entry, rng, size)[0]


def distance_summary(images: Sequence[np.ndarray], entries: Sequence[dict], seed: int = 0) -> dict:
    """{"distance", "drift", "n"}: generated images against real renders of the same entries."""
    generated, real = distance_features(images, entries, seed)
    return {"distance": frechet_between(generated, real), "drift": feature_drift(generated, real), "n": len(images)}


def distance_features(images: Sequence[np.ndarray], entries: Sequence[dict],
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(generated, real) (n, d) features: the images', and those of a real render of each image's entry."""
    if len(images) < 2:
        raise DmdrError(f"world-distance needs at least 2 images, got {len(images)}")
    real = feature_matrix(reference_renders(entries, images[0].shape[0], seed))
    return feature_matrix(images), real


def world_metrics(images, entries: Sequence[dict], *, seed: int = 0,
                  reward: Callable | None = None) -> dict:
    """World-GenEval, world-DPG and world-distance of in-memory images, for a training engine's tables.

    images: a (N, 3, H, W) float tensor in [0, 1], or N uint8 H x W x 3 arrays or PIL images.
    entries[i]: what image i was prompted with: GenEval-format metadata (has "tag") or a dense item (has
    "questions"); a dense item's images are its DPG tiles (every item needs the same number of images).
    reward: optional `reward(images_tensor, prompts) -> scores`, e.g. a `Reward`; its mean is reported.

    Returns {"n_images", "geneval": {task: accuracy, "overall"}, "dpg": {"overall", category: 0-100},
    "distance", "distance_drift", "reward"}, each key present when it applies; with "unit" in the entries
    also "units", the per-prompt scores the paired bootstrap needs (see `world_evaluation`).
    """
    return world_evaluation(images, entries, seed=seed, reward=reward)[0]


def world_evaluation(images, entries: Sequence[dict], *, seed: int = 0,
                     reward: Callable | None = None) -> tuple[dict, dict]:
    """(world_metrics' dict, details): details = {"records": per-image GenEval verdicts, "features": the
    images' FD features (n, d), "real_features": those of the reference renders}. When entries carry "unit",
    metrics["units"] = {"geneval": {unit: [tag, accuracy over its images]}, "dpg": {item_id: 0-100},
    "reward": {unit: mean}}: what a later paired comparison resamples."""
    arrays = [as_uint8(image) for image in images]
    if len(arrays) != len(entries):
        raise ValueError(f"{len(arrays)} images but {len(entries)} entries: give one entry per image")
    out: dict = {"n_images": len(arrays)}
    details: dict = {"records": []}
    geneval = [i for i, entry in enumerate(entries) if "tag" in entry]
    dense = [i for i, entry in enumerate(entries) if "questions" in entry]
    units: dict = {}
    if geneval:
        records = geneval_results([arrays[i] for i in geneval], [entries[i] for i in geneval])
        details["records"] = records
        out["geneval"] = summarize(records)
        if all("unit" in entries[i] for i in geneval):
            units["geneval"] = unit_means({entries[i]["unit"]: entries[i]["tag"] for i in geneval},
                                           [entries[i]["unit"] for i in geneval], [r["correct"] for r in records])
    if dense:
        report = _dpg_in_memory([arrays[i] for i in dense], [entries[i] for i in dense])
        out["dpg"] = dpg_summary(report)
        units["dpg"] = {item: 100 * score for item, score in report.per_item.items()}
    if len(arrays) >= 2:
        generated = feature_matrix(arrays)
        real = feature_matrix(reference_renders(entries, arrays[0].shape[0], seed))
        out["distance"], out["distance_drift"] = frechet_between(generated, real), feature_drift(generated, real)
        details["features"], details["real_features"] = generated, real
    if reward is not None:
        import torch

        tensor = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])
        with torch.no_grad():
            scores = reward(tensor, [e["prompt"] for e in entries]).float().cpu().numpy()
        out["reward"] = float(scores.mean())
        if all("unit" in e for e in entries):
            units["reward"] = {u: v[1] for u, v in unit_means({e["unit"]: "" for e in entries},
                                                                [e["unit"] for e in entries], scores).items()}
    if units and all("unit" in e for e in entries):
        out["units"] = units
    return out, details


def _dpg_in_memory(tiles: list[np.ndarray], entries: list[dict]) -> DpgReport:
    by_item: dict[str, list[np.ndarray]] = {}
    items: dict[str, dict] = {}
    for tile, entry in zip(tiles, entries):
        by_item.setdefault(entry["item_id"], []).append(tile)
        items[entry["item_id"]] = entry
    counts = {len(v) for v in by_item.values()}
    if len(counts) != 1:
        raise ValueError(f"every dense item needs the same number of images, got {sorted(counts)}")
    cols = counts.pop()
    grids = {k: make_grid([Image.fromarray(t) for t in v], rows=1, cols=cols) for k, v in by_item.items()}
    return dpg_report(list(items.values()), grids, rows=1, cols=cols)


# ---------------------------------------------------------------------------------------------------
# Folders written by `dmdr sample`.

def read_geneval_folder(root: str | Path) -> tuple[list[np.ndarray], list[dict], list[dict]]:
    """(images, metadata per image, metadata per prompt) of a world GenEval-layout folder, in sample order."""
    entries = read_prompt_folders(root, WORLD_VOCABULARY)
    images, per_image = [], []
    for entry in entries:
        if not entry.samples:
            raise DmdrError(f"GenEval prompt folder {str(entry.folder)!r} has no samples (samples/0000.png, ...)")
        for path in entry.samples:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            per_image.append(entry.metadata)
    return images, per_image, [entry.metadata for entry in entries]


def geneval_folder(root: str | Path, results_path: Path | None = None) -> dict:
    """World-GenEval of a folder; with `results_path`, its per-image verdicts are written there (results.jsonl)."""
    images, metadata, prompts = read_geneval_folder(root)
    results = geneval_results(images, metadata, files=geneval_files(root))
    if results_path is not None:
        write_results(results_path, results)
    return {"scores": summarize(results), "images": len(results), "prompts": len(prompts), "detector": DETECTOR,
            "failures": [r for r in results if not r["correct"]][:20],
            "units": prompt_units([unit for unit, _ in image_units(root)], results)}


def geneval_files(root: str | Path) -> list[str]:
    """The image files of a GenEval-layout folder, in `read_geneval_folder`'s order."""
    return [str(path) for entry in read_prompt_folders(root, WORLD_VOCABULARY) for path in entry.samples]


def image_units(root: str | Path) -> list[tuple[str, int]]:
    """(prompt unit, sample index) of each image of a GenEval-layout folder, in `read_geneval_folder`'s order;
    the unit is the prompt folder's index and prompt text (`paired.unit_key`)."""
    return [(unit_key(entry.index, entry.metadata["prompt"]), k)
            for entry in read_prompt_folders(root, WORLD_VOCABULARY) for k in range(len(entry.samples))]


FEATURES_FILE = "world_distance_features.npz"


def distance_folder(root: str | Path, seed: int = 0, features_path: Path | None = None) -> dict:
    """World-distance of a folder; with `features_path`, the per-image features of the generated images and of
    their real renders go there (npz: "generated", "real" float32 (n, d), "keys" "<unit>#<sample>"), so that
    `dmdr evaluate --compare` can bootstrap the difference of two models' distances over paired images."""
    images, metadata, _ = read_geneval_folder(root)
    generated, real = distance_features(images, metadata, seed)
    summary = {"distance": frechet_between(generated, real), "drift": feature_drift(generated, real),
               "n": len(images)}
    summary["features"] = "detector readings + pixel statistics (world/features.py)"
    summary["reference"] = f"render_for on the same metadata, image i from default_rng([{seed}, i])"
    if features_path is not None:
        keys = np.array([f"{unit}#{k}" for unit, k in image_units(root)])
        features_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = features_path.with_name(f".{features_path.stem}.tmp.npz")
        np.savez_compressed(tmp, generated=generated.astype(np.float32), real=real.astype(np.float32), keys=keys)
        tmp.replace(features_path)
        summary["features_file"] = features_path.name
    return summary


def write_items(folder: Path, items: Sequence[dict]) -> None:
    (folder / ITEMS_FILE).write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


def read_items(folder: str | Path) -> list[dict]:
    path = Path(folder) / ITEMS_FILE
    if not path.is_file():
        raise DmdrError(f"{path} does not exist: a world-DPG folder written by `dmdr sample --bench dpg` of a world "
                        f"model lists its dense items there")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dpg_folder(root: str | Path) -> dict:
    from ..evaluate.dpg import grid_image_paths

    items = read_items(root)
    report = dpg_report(items, grid_image_paths(root, [as_dpg_item(item) for item in items]))
    return {"scores": dpg_summary(report), "subcategories": report.subcategories, "prompts": report.n_prompts,
            "vqa": f"{DETECTOR} + world/answer.py",
            # per item, 0-100; keyed by id and prompt text: world item ids are positions ("shapes-0003")
            "units": {unit_key(item["item_id"], item["prompt"]): 100 * report.per_item[item["item_id"]]
                      for item in items if item["item_id"] in report.per_item}}
