"""Sample grids of fixed prompts and seeds during training: people would rather look than read."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..runtime.files import atomic_file, write_text_atomic

from ..sampling import sample
from .randomness import keyed_generator


def grid_image(images: torch.Tensor, cols: int | None = None, pad: int = 2):
    """(B, 3, H, W) in [0, 1] -> a PIL image with the samples tiled row by row on a white background."""
    from PIL import Image

    b, _, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    canvas = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(b):
        r, c = divmod(i, cols)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    array = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


@torch.no_grad()
def keyed_noise(family, n: int, resolution: int, *key) -> torch.Tensor:
    """Row i's starting noise from keyed_generator(*key, i): the same whatever the batch or the step."""
    return torch.cat([family.noise(1, resolution, resolution, generator=keyed_generator(*key, i)) for i in range(n)])


@torch.no_grad()  # a trainable generator would otherwise keep every batch's graph alive in the returned images
def student_images(ctx, cond, seed: int, tag: str = "grid", batch: int = 64) -> torch.Tensor:
    """Images of the current student for `cond`, one fixed noise per row (the same at every step)."""
    noise = keyed_noise(ctx.family, cond.batch_size, ctx.cfg.model.resolution, seed, tag)
    net = ctx.nets.as_generator()
    step_noise = iter(range(10**9))

    def fresh(like):
        return torch.randn(like.shape, generator=keyed_generator(seed, tag, "step", next(step_noise))).to(like)

    out = []
    for s in range(0, cond.batch_size, batch):
        with ctx.amp():
            x0 = sample(ctx.family, net, noise[s:s + batch].to(ctx.device), cond[s:s + batch].to(ctx.device),
                        ctx.student_times, ctx.sampler, fresh)
            out.append(ctx.family.decode(x0).float().cpu())
    return torch.cat(out)


def sample_grid(ctx, cond, seed: int):
    """The current student's sample grid for `cond` (fixed noise per row)."""
    return grid_image(student_images(ctx, cond, seed))


def write_sample_grid(image, prompts: list[str], folder: Path, step: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    with atomic_file(path, "the sample grid", convert=False) as tmp:  # no temporary file outlives a failure
        image.save(tmp, format="PNG")
    write_text_atomic(folder / "prompts.txt", "\n".join(prompts) + "\n", fsync=False, convert=False)
    return path


def validate(ctx, prompts: list[str], cond, rewards, seed: int) -> tuple[dict, torch.Tensor]:
    """Held-out prompts, fixed seeds: the student's images and, where the run has rewards, their mean scores."""
    images = student_images(ctx, cond, seed, tag="validation")
    metrics = {}
    with torch.no_grad():
        for reward, _spec in rewards:
            metrics[f"val_{reward.name}"] = float(reward(images.to(reward.device), prompts).mean())
    if metrics:
        metrics["val_reward_weighted"] = sum(spec.weight * metrics[f"val_{r.name}"] for r, spec in rewards)
    return metrics, images
