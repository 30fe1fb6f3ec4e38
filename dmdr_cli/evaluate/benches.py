"""GenEval and DPG-Bench on folders of real models' samples, split over processes (`accelerate launch`).

- GenEval: the Mask2Former detector and the CLIP ViT-L/14 colour classifier of geneval_detect.py, GenEval's
  rules (geneval_score.py), per task and overall. The detector is transformers' port, not the official mmdet
  2.x build: numbers differ slightly from official GenEval, and every report says so.
- DPG-Bench: any VQA model as `answer(image, question) -> str`: a local image-text-to-text transformers
  folder, or `module:function` naming one; scored by dpg.py (the official mPLUG-large is not loadable here).

Each process scores every N-th image (GenEval) or prompt (DPG); the main process merges. DPG's category
means are merged weighted by their question counts, so the merged numbers equal a single-process run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DmdrError
from ..runtime.distributed import Dist
from .dpg import AnswerFn, evaluate_dpg, grid_image_paths, load_dpg_csv
from .geneval_folder import read_prompt_folders
from .geneval_score import image_result, prompt_units, summarize, summary_counts, write_results_jsonl
from .paired import unit_key
from .shards import gather_records, share

DETECTOR_NOTE = ("Mask2Former Swin-S (COCO instance) through transformers + CLIP ViT-L/14 colour classifier; "
                 "GenEval's official detector is mmdet 2.x, so numbers differ slightly from official GenEval.")
VQA_NOTE = "The official DPG-Bench VQA is mPLUG-large (ModelScope): numbers with another VQA model are not comparable."


def geneval_folder_scores(root: Path, detect, color_classifier, dist: Dist, scratch: Path,
                          results_file: Path | None = None) -> dict | None:
    """Per-task and overall GenEval of a GenEval-layout folder, with the official summary's correct-image and
    correct-prompt fractions (on the main process; None elsewhere). `results_file`: where the main process
    writes the per-image records as the official results.jsonl."""
    entries = read_prompt_folders(root)
    samples = []
    for entry in entries:
        if not entry.samples:
            raise DmdrError(f"GenEval prompt folder {str(entry.folder)!r} has no samples (samples/0000.png, ...)")
        samples += [(len(samples) + k, entry, path) for k, path in enumerate(entry.samples)]
    records = []
    for index, entry, path in share(samples, dist):
        with Image.open(path) as raw:  # the official scorer applies EXIF orientation first
            image = ImageOps.exif_transpose(raw).convert("RGB")
        classify = color_classifier.for_image(image) if color_classifier is not None else None
        records.append({"index": index, **image_result(path, entry.metadata, detect(image), classify)})
    merged = gather_records(records, dist, scratch, "geneval")
    if merged is None:
        return None
    merged.sort(key=lambda r: r["index"])  # tasks are reported in order of first appearance
    units = [unit_key(samples[r["index"]][1].index, samples[r["index"]][1].metadata["prompt"]) for r in merged]
    summary = {"scores": summarize(merged), **summary_counts(merged), "units": prompt_units(units, merged)}
    if results_file is not None:
        summary["results"] = str(write_results_jsonl(results_file, merged))
    failures = [{k: r[k] for k in ("filename", "prompt", "reason")} for r in merged if not r["correct"]]
    return {**summary, "failures": failures[:20]}


def load_vqa(spec: str, device: str | None = None) -> tuple[AnswerFn, str]:
    """--vqa-model: a local image-text-to-text transformers folder, or `module:function` (answer(image, question))."""
    if not Path(spec).exists() and ":" in spec:
        return _import_answer(spec), f"{spec} (user function)"
    from .dpg_vqa import load_transformers_vqa

    return load_transformers_vqa(spec, device=device), f"{spec} (transformers image-text-to-text)"


def _import_answer(target: str) -> AnswerFn:
    from ..rewards.custom import import_target

    return import_target(target, "--vqa-model", signature="(image, question) -> answer")


OFFICIAL_DPG = "official (compute_dpg_bench.py: first CSV row skipped, exact \"yes\")"


def dpg_arithmetic(all_rows: bool, lenient_yes: bool) -> str:
    """Which arithmetic a DPG-Bench number used, in words for the report."""
    if not (all_rows or lenient_yes):
        return OFFICIAL_DPG
    changes = [text for flag, text in ((all_rows, "every CSV row asked (--dpg-all-rows)"),
                                       (lenient_yes, "lenient \"Yes.\" matching (--dpg-lenient-yes)")) if flag]
    return f"NOT official: {', '.join(changes)}; not comparable with published DPG-Bench numbers"


def dpg_folder_scores(root: Path, csv: Path, answer: AnswerFn, dist: Dist, scratch: Path, *, all_rows: bool = False,
                      lenient_yes: bool = False, answers_file: Path | None = None) -> dict | None:
    """DPG-Bench overall and per category of a folder of <item_id>.png grids (main process; None elsewhere),
    by the official arithmetic unless `all_rows` / `lenient_yes` (dpg.py). `answers_file`: where the main
    process writes every question's answer per tile (JSON lines)."""
    items = load_dpg_csv(csv, all_rows=all_rows)
    paths = grid_image_paths(root, items)
    mine = share(items, dist)
    part = {"per_item": {}, "dropped": [], "categories": {}, "subcategories": {}, "answers": []}
    if mine:
        report = evaluate_dpg(mine, {item.item_id: paths[item.item_id] for item in mine}, answer,
                              lenient_yes=lenient_yes)
        scored = [item for item in mine if item.item_id in report.per_item]
        part = {"per_item": report.per_item, "dropped": report.dropped, "answers": report.answers,
                "categories": _weighted(report.categories, scored, lambda q: q.broad_category),
                "subcategories": _weighted(report.subcategories, scored, lambda q: q.category)}
    parts = gather_records([part], dist, scratch, "dpg")
    if parts is None:
        return None
    per_item = {k: v for p in parts for k, v in p["per_item"].items()}
    if not per_item:
        raise DmdrError("DPG-Bench: no prompt could be scored")
    section = {"scores": {"overall": 100 * float(np.mean(list(per_item.values()))),
                          **_merge_means([p["categories"] for p in parts])},
               "subcategories": _merge_means([p["subcategories"] for p in parts]), "prompts": len(per_item),
               "dropped": sorted(d for p in parts for d in p["dropped"]),
               "arithmetic": dpg_arithmetic(all_rows, lenient_yes), "all_rows": all_rows, "lenient_yes": lenient_yes,
               "units": {k: 100 * float(per_item[k]) for k in sorted(per_item)}}  # per item id, 0-100
    if answers_file is not None:
        order = {item.item_id: k for k, item in enumerate(items)}
        answers = sorted((a for p in parts for a in p["answers"]), key=lambda a: (order[a["item_id"]], a["tile"]))
        answers_file.parent.mkdir(parents=True, exist_ok=True)
        answers_file.write_text("".join(json.dumps(a) + "\n" for a in answers), encoding="utf-8")
        section["answers"] = str(answers_file)
    return section


def _weighted(means: dict[str, float], items, category_of) -> dict[str, list[float]]:
    """{category: [mean, number of answers it averages]}: each scored item's questions count once."""
    counts: dict[str, int] = {}
    for item in items:
        for q in item.questions:
            counts[category_of(q)] = counts.get(category_of(q), 0) + 1
    return {c: [v, counts[c]] for c, v in means.items()}


def _merge_means(parts: list[dict[str, list[float]]]) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for part in parts:
        for c, (mean, n) in part.items():
            t = totals.setdefault(c, [0.0, 0])
            t[0] += mean * n
            t[1] += n
    return {c: s / n for c, (s, n) in sorted(totals.items()) if n}
