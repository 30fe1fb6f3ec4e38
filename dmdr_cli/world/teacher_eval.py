"""World-GenEval of a world teacher: sample GenEval-style prompts with the family's own teacher sampler
(the scheduler saved with the pipeline, CFG in x0-space), read the images back with the exact
detector, and score them with GenEval's rules (evaluate/geneval_score.py).

Noise is keyed by (seed, prompt index), so a prompt's image does not depend on the batch it ran in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ..evaluate.geneval_score import summarize
from .batches import derived_seed
from .bench import as_uint8, geneval_results
from ..families import Family
from ..families.base import Guidance
from ..sampling import teacher_sample
from .builtin_prompts import VAL_SEED
from .prompts import generate_prompts


def sample_prompts(family: Family, prompts: list[str], steps: int, cfg_scale: float, seed: int,
                   batch_size: int = 64) -> torch.Tensor:
    """Teacher samples for `prompts` as [0, 1] images (N, 3, H, W); CFG off when `cfg_scale` is 1."""
    size = family.resolution
    net = family.components.denoiser
    uncond = family.encode_prompts([""])
    batches = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        noise = torch.cat([
            family.noise(1, size, size, generator=torch.Generator().manual_seed(derived_seed(seed, start + i)))
            for i in range(len(chunk))
        ])
        guidance = Guidance(cfg_scale, uncond) if cfg_scale != 1.0 else None
        with torch.no_grad():
            latents = teacher_sample(family, net, noise, family.encode_prompts(chunk), steps, guidance)
        batches.append(family.decode(latents))
    return torch.cat(batches)


def world_geneval(family: Family, metadata: list[dict], steps: int, cfg_scale: float, seed: int = 0,
                  batch_size: int = 64) -> tuple[dict[str, float], list[dict]]:
    """(per-task and overall scores, one record per image) for GenEval-style `metadata`."""
    images = sample_prompts(family, [m["prompt"] for m in metadata], steps, cfg_scale, seed, batch_size)
    records = geneval_results([as_uint8(image) for image in images], metadata)
    return summarize(records), records


def report_teacher_geneval(recipe, folder: Path, console: Console) -> dict[str, float]:
    """World-GenEval of the exported teacher at `folder` with the recipe's sampling settings; the scores
    go to the console and to folder/geneval.json."""
    from ..families import load_family

    family = load_family(recipe.model.model_copy(update={"pretrained": str(folder)}))
    steps = recipe.sample.steps or 25
    cfg_scale = recipe.sample.cfg if recipe.sample.cfg is not None else recipe.guidance.scale
    metadata = generate_prompts(recipe.world.teacher.eval_prompts, seed=VAL_SEED, size=family.resolution)
    with torch.random.fork_rng(devices=[]):
        scores, _ = world_geneval(family, metadata, steps, cfg_scale, seed=recipe.sample.seed)
    table = Table(title=f"world-GenEval, {len(metadata)} prompts, {steps} steps, CFG {cfg_scale}")
    for name in ("task", "score"):
        table.add_column(name)
    for task, score in scores.items():
        table.add_row(task, f"{score:.3f}")
    console.print(table)
    summary = {"prompts": len(metadata), "steps": steps, "cfg": cfg_scale, "scores": scores}
    (Path(folder) / "geneval.json").write_text(json.dumps(summary, indent=1) + "\n")
    return scores
