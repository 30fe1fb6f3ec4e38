"""ODE-regression warm start: teach a (1-step) student the teacher's noise -> image map before DMD.

DMD2 (arXiv 2405.14867, sec. 4) and DMDR start their 1-step SDXL students from such a checkpoint. Here
the pairs are made by the project itself, image-free: noise from keyed seeds, the teacher's own
multi-step sampler with CFG, on the run's prompts. The student is then regressed onto them at its
first time (the one fed pure noise). The pairs are cached in the run folder, stamped with a key of
everything they depend on, so a resumed or restarted run reuses them and a changed recipe remakes them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..runtime.checkpoint import as_os_errors
from ..runtime.files import atomic_file

from ..errors import DmdrError
from ..families.base import Guidance
from ..sampling import teacher_sample
from .randomness import keyed_generator


def shard(n: int, rank: int, world_size: int) -> range:
    """Pair ids [0, n) split into `world_size` contiguous shards whose sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def cached(cache: Path, key: str) -> bool:
    """Whether `cache` holds pairs made for `key` (a damaged or foreign file does not)."""
    from safetensors import SafetensorError, safe_open

    if not cache.is_file():
        return False
    try:
        with safe_open(str(cache), "pt") as f:
            return (f.metadata() or {}).get("key") == key
    except (OSError, SafetensorError):
        return False


def make_pairs(ctx, conds, n_pairs: int, seed: int, cache: Path, progress=None, dist=None,
               key: str = "") -> dict[str, torch.Tensor]:
    """{noise, target, prompt_index}: teacher ODE outputs for keyed noise, prompt i = pair i mod #prompts.

    With several processes each makes its shard of the pairs, all gather them, and the main process alone
    writes the cache (every pair depends on its id only, so the split does not change them). `key` names what
    the pairs depend on (teacher, prompts, sampler settings): a cache made for another key is made again.
    """
    from safetensors.torch import load_file, save_file

    rank, world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    missing = not cached(cache, key)
    if dist is not None:
        missing = dist.any(missing)  # all processes agree on making them or not
    if not missing:
        return load_file(str(cache))
    cfg = ctx.cfg.ode_regression
    scale = cfg.cfg if cfg.cfg is not None else ctx.cfg.guidance.scale
    shape = ctx.family.latent_shape(ctx.cfg.model.resolution)
    noise, target, index = [], [], []
    batch = ctx.cfg.train.batch_size
    teacher = ctx.nets.as_real(0.0)
    mine = shard(n_pairs, rank, world_size)
    for start in range(mine.start, mine.stop, batch):
        ids = list(range(start, min(start + batch, mine.stop)))
        z = torch.stack([torch.randn(shape, generator=keyed_generator(seed, "ode-pair", i)) for i in ids]).to(ctx.device)
        rows = torch.tensor([i % conds.batch_size for i in ids])
        cond = conds[rows].to(ctx.device)
        with torch.no_grad(), ctx.amp():
            x0 = teacher_sample(ctx.family, teacher, z, cond, cfg.teacher_steps, Guidance(scale, ctx.uncond))
        noise.append(z.cpu())
        target.append(x0.float().cpu())
        index.append(rows)
        if progress is not None:
            progress(len(ids) * world_size)
    pairs = {"noise": _rows(noise, shape, torch.float32), "target": _rows(target, shape, torch.float32),
             "prompt_index": _rows(index, (), torch.long)}
    if world_size > 1:
        pairs = {k: dist.gather_rows(v, [len(shard(n_pairs, r, world_size)) for r in range(world_size)])
                 for k, v in pairs.items()}
    if rank == 0:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache, "the ODE pair cache", convert=False) as tmp:
            with as_os_errors():
                save_file(pairs, str(tmp), metadata={"key": key})
    if dist is not None:
        dist.barrier()  # the cache is complete before any process goes on (or a resume reads it)
    return pairs


def _rows(parts: list[torch.Tensor], shape, dtype) -> torch.Tensor:
    """The batches of a shard as one tensor (a process can have no pairs when there are fewer than processes)."""
    return torch.cat(parts) if parts else torch.empty(0, *shape, dtype=dtype)


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
