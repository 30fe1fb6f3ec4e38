"""Regression onto the teacher's own samples: an ODE-regression warm start, and a term during DMD.

Warm start: DMD2 (arXiv 2405.14867, sec. 4) and DMDR start their 1-step SDXL students from a checkpoint
regressed onto the teacher's noise -> image map. Term: DMD (arXiv 2311.18828) adds such a regression loss
to every generator update so that the mode-seeking distribution-matching gradient cannot drop what the
teacher draws; CausVid does the same against drift over many steps. The pairs are made by the project
itself, image-free: noise from keyed seeds, the teacher's own multi-step sampler with CFG, on the run's
training prompts. They are cached (the run folder, or `ode_regression.cache` to share them between runs)
with a record of what made them (`pair_identity`), so a resumed or restarted run reuses them; a failed run
leaves the cache in place. A run-folder cache made for other pairs (or damaged) is made again; a shared
cache the user named is never overwritten: one made for other pairs is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..runtime.checkpoint import as_os_errors
from ..runtime.files import atomic_file

from ..data.prompts import prompt_index
from ..errors import DmdrError
from ..families.base import Guidance
from ..sampling import teacher_sample
from .randomness import keyed_generator

IDENTITY_KEY = "dmdr_ode_pairs"  # the safetensors metadata entry holding a pair cache's pair_identity


def shard(n: int, rank: int, world_size: int) -> range:
    """Pair ids [0, n) split into `world_size` contiguous shards whose sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def pair_identity(cfg, prompts: Sequence[str]) -> dict:
    """What the pairs are made of: a cache is reused only by a run that would make the same pairs (the teacher
    as loaded, the training prompts' texts in order, the pair count and seed, the teacher's sampler)."""
    ode, model = cfg.ode_regression, cfg.model.model_dump(mode="json")
    return {"teacher": model.pop("pretrained"), **model, "prompts": prompts_digest(prompts),
            "n_prompts": len(prompts), "pairs": ode.pairs, "seed": pair_seed(cfg), "teacher_steps": ode.teacher_steps,
            "cfg": ode.cfg if ode.cfg is not None else cfg.guidance.scale, "uncond": cfg.guidance.uncond}


def prompts_digest(prompts: Sequence[str]) -> str:
    """A 64-bit BLAKE2b digest of the prompts in order (another file with the same texts gives the same)."""
    digest = hashlib.blake2b(digest_size=8)
    for prompt in prompts:
        digest.update(prompt.encode("utf-8") + b"\0")
    return digest.hexdigest()


def pair_seed(cfg) -> int:
    return cfg.ode_regression.seed if cfg.ode_regression.seed is not None else cfg.train.seed


def cache_path(cfg, run_dir: Path) -> Path:
    return Path(cfg.ode_regression.cache).expanduser() if cfg.ode_regression.cache else run_dir / "ode_pairs.safetensors"


def cache_mismatch(cache: Path, identity: dict) -> str | None:
    """None where `cache` holds the pairs `identity` describes, else why not (missing, damaged, made for other
    pairs: the differing entries, or a file that records none)."""
    from safetensors import SafetensorError, safe_open

    if not cache.is_file():
        return "missing"
    try:
        with safe_open(str(cache), "pt") as f:
            saved = json.loads((f.metadata() or {}).get(IDENTITY_KEY, "null"))
    except (OSError, SafetensorError, ValueError) as err:
        return f"unreadable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    if not isinstance(saved, dict):
        return "made for other pairs (it records no dmdr pair identity)"
    if saved != identity:
        differ = ", ".join(f"{k} {saved.get(k)!r} vs {v!r}" for k, v in identity.items() if saved.get(k) != v)
        return f"made for other pairs ({differ or 'other entries'})"
    return None


def make_pairs(ctx, conds, n_pairs: int, seed: int, cache: Path, progress=None, dist=None, *, identity: dict,
               shared: bool = False) -> dict[str, torch.Tensor]:
    """{noise, target, prompt_index}: teacher ODE outputs for keyed noise; pair i takes training prompt
    `prompt_index(i, #prompts, seed)` (the training order, so any number of pairs covers the prompts evenly).
    `conds`: the training prompts' conditioning, in the order of the prompt list.

    With several processes each makes its shard of the pairs, all gather them, and the main process alone
    writes the cache (every pair depends on its id only, so the split does not change them). `identity`
    (pair_identity) is recorded in the cache: one that records another is made again, unless it is `shared`
    (the user's ode_regression.cache, which may be another run's: refused, never overwritten).
    """
    from safetensors.torch import load_file, save_file

    rank, world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mismatch = cache_mismatch(cache, identity)
    refused = None
    if shared and mismatch not in (None, "missing"):
        refused = DmdrError(f"ODE pair cache {cache} is {mismatch}: point ode_regression.cache elsewhere, or "
                            f"delete the file to make the pairs again")
    if dist is not None:  # all processes agree on refusing, making them or reading them
        dist.raise_together(refused, f"ODE pair cache {cache} was refused by another process (its error is above)")
        remake = dist.any(mismatch is not None)
    elif refused is not None:
        raise refused
    else:
        remake = mismatch is not None
    if not remake:
        with as_os_errors():
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
        rows = torch.tensor([prompt_index(i, conds.batch_size, seed) for i in ids])
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
                save_file(pairs, str(tmp), metadata={IDENTITY_KEY: json.dumps(identity)})
    if dist is not None:
        dist.barrier()  # the cache is complete before any process goes on (or a resume reads it)
    return pairs


def _rows(parts: list[torch.Tensor], shape, dtype) -> torch.Tensor:
    """The batches of a shard as one tensor (a process can have no pairs when there are fewer than processes)."""
    return torch.cat(parts) if parts else torch.empty(0, *shape, dtype=dtype)


def term_loss(ctx, pairs: dict, conds, sample_ids: list[int], seed: int) -> torch.Tensor:
    """The regression term of one micro-batch: each global sample id draws its pair, its student step and its
    fresh noise from its own keyed generator (so N processes draw what one process would)."""
    gens = [keyed_generator(seed, "ode-term", i) for i in sample_ids]
    rows = torch.stack([torch.randint(len(pairs["target"]), (), generator=g) for g in gens])
    return regression_loss(ctx, pairs, conds, rows, gens)


def regression_loss(ctx, pairs: dict, conds, rows: torch.Tensor, generators: list | None = None) -> torch.Tensor:
    """Student x0 vs the teacher's ODE output. Without `generators` (the warm start), from the pair's noise at the
    student's first time. With one per row (the term during DMD), each row also draws a student step j: j = 0 as
    before, j > 0 the teacher's sample renoised to the student's time j with fresh noise, the kind of input the
    student gets there, so every step learns not to drop what the teacher drew."""
    noise = pairs["noise"][rows].to(ctx.device)
    target = pairs["target"][rows].to(ctx.device)
    cond = conds[pairs["prompt_index"][rows]].to(ctx.device)
    times = torch.tensor(ctx.student_times, dtype=torch.float32)
    step = torch.zeros(len(rows), dtype=torch.long)
    if generators is not None:
        step = torch.stack([torch.randint(len(times), (), generator=g) for g in generators])
        fresh = torch.stack([torch.randn(noise.shape[1:], generator=g) for g in generators]).to(ctx.device)
    t = times[step].to(ctx.device)
    x_in = noise
    if bool((step > 0).any()):
        renoised = ctx.family.schedule.renoise(target, t, fresh)
        x_in = torch.where((step > 0).to(ctx.device).view(-1, *[1] * (noise.dim() - 1)), renoised, noise)
    with ctx.amp():
        x0 = ctx.family.predict_x0(ctx.nets.as_generator(), x_in, t, cond).float()
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
