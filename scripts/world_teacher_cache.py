"""Compute the shipped teacher's scores on the frozen world evaluation set once, into its cache
(dmdr_cli/world/weights/teacher/eval_cache.json + eval_cache-<key>.npz), exactly as the end of a world
distillation would (same recipe settings, prompts, keyed noise and evaluator):

    OMP_NUM_THREADS=1 python scripts/world_teacher_cache.py [recipes/world/dmdr.yaml]

1,392 images x 25 DDIM steps with CFG (50 NFE) at 24 px; measured 25 min on one CPU thread. Runs of the
main job then read the teacher's per-prompt scores from the cache and only sample the student.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from dmdr_cli.data.conditioning import encode_all
from dmdr_cli.families import load_family
from dmdr_cli.recipe import load_recipe
from dmdr_cli.runtime.precision import autocast, autocast_dtype, frozen_dtype
from dmdr_cli.world.report import CACHE_FILE, _reward, eval_entries, teacher_metrics


def main(recipe_path: str = "recipes/world/dmdr.yaml") -> None:
    cfg = load_recipe(recipe_path)
    device = torch.device("cpu")
    family = load_family(cfg.model, device=device, dtype=frozen_dtype(cfg.model.dtype, device),
                         uncond_mode=cfg.guidance.uncond)
    entries = eval_entries(cfg.model.resolution)
    prompts = sorted({e["prompt"] for e in entries})
    conds = encode_all(family, prompts, device)
    index = {p: i for i, p in enumerate(prompts)}
    dtype = autocast_dtype(cfg.train.mixed_precision, device)
    start = time.perf_counter()
    metrics, _ = teacher_metrics(family, family.denoiser, family.unconditional(), conds[[index[e["prompt"]] for e in entries]],
                                 entries, cfg.sample.steps or 25, cfg.sample.cfg or cfg.guidance.scale,
                                 _reward(cfg, device), Path(cfg.model.pretrained), cfg.model.resolution, device,
                                 lambda: autocast(device, dtype))
    print(f"{len(entries)} images in {time.perf_counter() - start:.0f} s -> {Path(cfg.model.pretrained) / CACHE_FILE}")
    print({k: round(v, 3) for k, v in metrics["geneval"].items()}, "DPG", round(metrics["dpg"]["overall"], 1),
          "reward", round(metrics.get("reward", float("nan")), 3), "FD", round(metrics["distance"], 1))


if __name__ == "__main__":
    main(*sys.argv[1:])
