"""What the world's images hold where the detector accepts no object: a census on the evaluation set.

    python scripts/world_census.py RUN [RUN ...]     # runs whose report/ holds images and results.jsonl

Per task (single object, colours, counting): the share of images with no accepted object, how many of those
hold a rejected blob (a fragment the detector saw and refused), the share whose largest non-background blob
is under 12 pixels (a speck: a rendered shape at 24 px covers 20 to 50), and the mean side of the accepted
objects, for the real renders, the teacher (its cached FD features; no speck column: its images are not kept)
and each run's end-of-run report. Numbers in docs/results.md ("Training longer") come from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("single_object", "colors", "counting")
SPECK_PIXELS = 12


def largest_blob(image: np.ndarray) -> int:
    """Pixels of the largest 4-connected region away from the background colour."""
    from scipy import ndimage

    from dmdr_cli.world.features import BACKGROUND_RADIUS
    from dmdr_cli.world.scene import BACKGROUND

    distance = np.linalg.norm(image.astype(np.float64) - np.asarray(BACKGROUND, dtype=np.float64), axis=-1)
    labels, count = ndimage.label(distance > BACKGROUND_RADIUS)
    return int(np.bincount(labels.ravel())[1:].max()) if count else 0


def rows(features: np.ndarray, tags: np.ndarray, blobs: np.ndarray | None) -> dict[str, dict]:
    from dmdr_cli.world.features import FEATURE_NAMES
    from dmdr_cli.world.scene import SHAPES

    column = {name: i for i, name in enumerate(FEATURE_NAMES)}
    kept = sum(features[:, column[f"count_{s}"]] for s in SHAPES)
    out = {}
    for task in TASKS:
        mask = tags == task
        if not mask.any():
            continue
        empty = kept[mask] == 0
        fragments = features[mask, column["fragments"]] > 0
        side = features[mask, column["side_mean"]][~empty] / 10  # fraction of the image side
        out[task] = {"images": int(mask.sum()), "no_object": float(empty.mean()),
                     "no_object_with_rejected_blob": int((empty & fragments).sum()),
                     "speck": float((blobs[mask] < SPECK_PIXELS).mean()) if blobs is not None else None,
                     "side": float(side.mean())}
    return out


def teacher_rows(entries: list[dict], rows_of_task: list[int]) -> list[np.ndarray]:
    """The shipped teacher's evaluation images of `rows_of_task`, row i from keyed_generator(EVAL_SEED, EVAL_TAG, i)
    as the evaluation draws it (world/report.py)."""
    import torch

    from dmdr_cli.dmd.randomness import keyed_generator
    from dmdr_cli.families import load_family
    from dmdr_cli.families.base import Guidance
    from dmdr_cli.recipe import load_recipe
    from dmdr_cli.sampling import teacher_sample
    from dmdr_cli.world.report import EVAL_SEED, EVAL_TAG

    cfg = load_recipe(REPO / "recipes/world/dmdr.yaml")
    family = load_family(cfg.model, uncond_mode=cfg.guidance.uncond)
    net = family.denoiser.eval()
    size = cfg.model.resolution
    noise = torch.cat([family.noise(1, size, size, generator=keyed_generator(EVAL_SEED, EVAL_TAG, i)) for i in rows_of_task])
    cond = family.encode_prompts([entries[i]["prompt"] for i in rows_of_task])
    with torch.no_grad():
        x0 = teacher_sample(family, net, noise, cond, cfg.sample.steps or 25, Guidance(cfg.guidance.scale, family.unconditional()))
        pixels = family.decode(x0).float().clamp(0, 1)
    return [(255 * image.permute(1, 2, 0).numpy()).round().astype(np.uint8) for image in pixels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--teacher-task", choices=TASKS,
                        help="also sample the teacher (25 steps, CFG 2) on this task's evaluation rows, from the "
                             "evaluation's own keyed noise (the images its cached features came from; about 1 s an "
                             "image on one CPU thread), for the speck column")
    args = parser.parse_args()
    from PIL import Image

    from dmdr_cli.world.bench import evaluation_entries, reference_renders
    from dmdr_cli.world.features import feature_matrix
    from dmdr_cli.world.report import TEACHER_FOLDER, CACHE_FILE

    entries = evaluation_entries(24)
    tags = np.array([e.get("tag", "dense") for e in entries])
    renders = reference_renders(entries, 24, 0)
    table = {"real renders": rows(feature_matrix(renders), tags, np.array([largest_blob(r) for r in renders]))}
    key = next(iter(json.loads((TEACHER_FOLDER / CACHE_FILE).read_text())))
    with np.load(TEACHER_FOLDER / f"eval_cache-{key}.npz") as cached:
        table["teacher (cached features)"] = rows(cached["features"], tags, None)
    if args.teacher_task:
        rows_of_task = [i for i, tag in enumerate(tags) if tag == args.teacher_task]
        images = teacher_rows(entries, rows_of_task)
        table[f"teacher, {args.teacher_task} sampled"] = rows(feature_matrix(images), tags[rows_of_task],
                                                              np.array([largest_blob(i) for i in images]))
    for run in args.runs:
        results = [json.loads(line) for line in (run / "report" / "results.jsonl").read_text().splitlines()]
        images = [np.asarray(Image.open(run / "report" / r["file"]).convert("RGB")) for r in results]
        table[str(run)] = rows(feature_matrix(images), np.array([r["tag"] for r in results]),
                               np.array([largest_blob(i) for i in images]))
    print("| images | task | no object | of which a rejected blob | largest blob < 12 px | mean object side (px) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, per_task in table.items():
        for task, r in per_task.items():
            speck = "-" if r["speck"] is None else f"{r['speck']:.3f}"
            print(f"| {name} | {task} | {r['no_object']:.3f} | {r['no_object_with_rejected_blob']} | {speck} | "
                  f"{24 * r['side']:.2f} |")


if __name__ == "__main__":
    main()
