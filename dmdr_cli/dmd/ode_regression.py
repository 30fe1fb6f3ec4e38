"""ODE-regression warm start: teach a (1-step) student the teacher's noise -> image map before DMD.

DMD2 (arXiv 2405.14867, sec. 4) and DMDR start their 1-step SDXL students from such a checkpoint. Here
the pairs are made by the project itself, image-free: noise from keyed seeds, the teacher's own
multi-step sampler with CFG, on the run's prompts. The student is then regressed onto them at its
first time (the one fed pure noise). The pairs are cached in the run folder, so a resumed run reuses
them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DmdrError
from ..families.base import Guidance
from ..sampling import teacher_sample
from .randomness import keyed_generator


def make_pairs(ctx, conds, n_pairs: int, seed: int, cache: Path, progress=None) -> dict[str, torch.Tensor]:
    """{noise, target, prompt_index}: teacher ODE outputs for keyed noise, prompt i = pair i mod #prompts."""
    from safetensors.torch import load_file, save_file

    if cache.is_file():
        return load_file(str(cache))
    cfg = ctx.cfg.ode_regression
    scale = cfg.cfg if cfg.cfg is not None else ctx.cfg.guidance.scale
    shape = ctx.family.latent_shape(ctx.cfg.model.resolution)
    noise, target, index = [], [], []
    batch = ctx.cfg.train.batch_size
    teacher = ctx.nets.as_real(0.0)
    for start in range(0, n_pairs, batch):
        ids = list(range(start, min(start + batch, n_pairs)))
        z = torch.stack([torch.randn(shape, generator=keyed_generator(seed, "ode-pair", i)) for i in ids]).to(ctx.device)
        rows = torch.tensor([i % conds.batch_size for i in ids])
        cond = conds[rows].to(ctx.device)
        with torch.no_grad(), ctx.amp():
            x0 = teacher_sample(ctx.family, teacher, z, cond, cfg.teacher_steps, Guidance(scale, ctx.uncond))
        noise.append(z.cpu())
        target.append(x0.float().cpu())
        index.append(rows)
        if progress is not None:
            progress(len(ids))
    pairs = {"noise": torch.cat(noise), "target": torch.cat(target), "prompt_index": torch.cat(index)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    save_file(pairs, str(tmp))
    tmp.replace(cache)
    return pairs


def regression_loss(ctx, pairs: dict, conds, rows: torch.Tensor) -> torch.Tensor:
    """Student x0 from the pair's noise at its first time vs the teacher's ODE output."""
    noise = pairs["noise"][rows].to(ctx.device)
    target = pairs["target"][rows].to(ctx.device)
    cond = conds[pairs["prompt_index"][rows]].to(ctx.device)
    t = torch.full((len(rows),), ctx.student_times[0], device=ctx.device)
    with ctx.amp():
        x0 = ctx.family.predict_x0(ctx.nets.as_generator(), noise, t, cond).float()
    if ctx.cfg.ode_regression.loss == "mse":
        return torch.nn.functional.mse_loss(x0, target)
    return _lpips(ctx)(ctx.family.decode(x0) * 2 - 1, ctx.family.decode(target) * 2 - 1).mean()


def _lpips(ctx):
    try:
        import lpips
    except ImportError:
        raise DmdrError("ode_regression.loss is lpips but the lpips package is not installed: pip install 'dmdr[lpips]' "
                        "(its VGG weights are fetched on first use), or set ode_regression.loss=mse") from None
    if not hasattr(ctx, "_lpips"):
        ctx._lpips = lpips.LPIPS(net="vgg").to(ctx.device).eval().requires_grad_(False)
    return ctx._lpips
