"""Why the shipped world teacher scores what it does: the numbers behind docs/results.md's teacher section.

    python scripts/world_teacher_diagnostics.py                # ~1.5 min on 2 cores
    python scripts/world_teacher_diagnostics.py --schedulers   # + three samplers on the first 150 prompts, ~3 min more

Samples the teacher's 300 held-out world-GenEval prompts as `dmdr world teacher` scores them (DDIM 25
steps, CFG 2, keyed noise) and prints: the exact detector's score quantiles, counting accuracy at
several detection thresholds (GenEval's 0.9 against the world's calibrated level), and the share of
images in which the detector reads nothing, per task. With --schedulers, world-GenEval of the same
weights under other diffusers samplers (the prompts are ordered by task, so the first 150 cover four
of the six tasks).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from dmdr_cli.evaluate.geneval_score import score_image, summarize
from dmdr_cli.world.bench import as_uint8
from dmdr_cli.families import load_family
from dmdr_cli.recipe import load_recipe
from dmdr_cli.world.builtin_prompts import VAL_SEED
from dmdr_cli.world.detect import detect_objects
from dmdr_cli.world.prompts import generate_prompts
from dmdr_cli.world.teacher_eval import sample_prompts, world_geneval

RECIPE = "recipes/world/teacher.yaml"
THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
SAMPLERS = (("DDIMScheduler", {}), ("DDIMScheduler", {"clip_sample": True}), ("DDPMScheduler", {"clip_sample": True}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedulers", action="store_true")
    args = parser.parse_args()
    recipe = load_recipe(RECIPE)
    family = load_family(recipe.model)
    steps, cfg_scale = recipe.sample.steps or 25, recipe.guidance.scale
    metadata = generate_prompts(recipe.world.teacher.eval_prompts, seed=VAL_SEED, size=family.resolution)
    with torch.no_grad():
        images = sample_prompts(family, [m["prompt"] for m in metadata], steps, cfg_scale, recipe.sample.seed)
    detections = [detect_objects(as_uint8(image)) for image in images]

    scores = [d["score"] for dets in detections for d in dets]
    print("detection score quantiles 10/25/50/75/90 %:", np.round(np.quantile(scores, [0.1, 0.25, 0.5, 0.75, 0.9]), 2))
    for threshold in THRESHOLDS:
        records = [{"tag": m["tag"], "correct": score_image(m, dets, counting_threshold=threshold)[0]}
                   for m, dets in zip(metadata, detections)]
        summary = summarize(records)
        print(f"counting threshold {threshold}: counting {summary['counting']:.3f}, overall {summary['overall']:.3f}")
    blank = defaultdict(list)
    for m, dets in zip(metadata, detections):
        blank[m["tag"]].append(not dets)
    print(f"images with no detection: {np.mean([b for v in blank.values() for b in v]):.3f} of {len(metadata)};",
          ", ".join(f"{tag} {np.mean(v):.2f}" for tag, v in blank.items()))

    if args.schedulers:
        base = dict(family.components.scheduler_config)
        for name, extra in SAMPLERS:
            family.components.scheduler_config = {**base, "_class_name": name, **extra}
            summary, _ = world_geneval(family, metadata[:150], steps, cfg_scale, seed=recipe.sample.seed)
            print(f"{name} {extra or ''}: world-GenEval {summary['overall']:.3f} on the first 150 prompts")


if __name__ == "__main__":
    main()
