"""Step schedules of DMDR: DynaRS renoise times, DynaDG real-score LoRA scale, CFG-scale jitter.

Pure functions of the generator step k (generator updates, counted across both stages and across
`--init`), so a resumed run replays exactly the same schedule. Formulas: ALGORITHM.md "DynaDG" and
"DynaRS" (DMDR, arXiv 2511.13649); the renoise range [t_min, t_max] and the uniform fallback follow
DMD2 (arXiv 2405.14867). Times are in [0, 1] with 1 = pure noise, the same for every family.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dmdr_cli.recipe.schema import DmdSection, DynaDGSection, DynaRSSection


def _cosine_decay(progress: float) -> float:
    """1 at progress 0, 0 at progress >= 1, half a cosine in between."""
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _check_step(k: int) -> None:
    if k < 0:
        raise ValueError(f"generator step k must be >= 0, got {k}")


def dynars_c(k: int, K_rs: int) -> float:
    """DynaRS mixing weight c(k) = 0.5 (1 + cos(pi min(k / K_rs, 1))): 1 at the start, 0 from K_rs on."""
    _check_step(k)
    if K_rs < 1:
        raise ValueError(f"K_rs must be >= 1, got {K_rs}")
    return _cosine_decay(k / K_rs)


def dynars_beta_params(k: int, cfg: DynaRSSection) -> tuple[float, float]:
    """(alpha, beta) of the renoise Beta at step k: Beta(4, 1.5) at k = 0 (authors' boosts 3 and 0.5),
    biased toward high noise so global structure is matched first; Beta(1, 1) = uniform from K_rs on,
    and always when DynaRS is disabled."""
    if not cfg.enabled:
        _check_step(k)
        return 1.0, 1.0
    c = dynars_c(k, cfg.steps)
    return 1.0 + cfg.alpha_boost * c, 1.0 + cfg.beta_boost * c


def sample_beta(alpha: float, beta: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of Beta(alpha, beta) that depend only on the generator's state.

    torch.distributions.Beta takes no generator, so draw X ~ Gamma(alpha), Y ~ Gamma(beta) and return
    X / (X + Y). `torch._standard_gamma` is the sampler behind torch.distributions.Gamma and accepts a
    generator (on CPU and CUDA; the tensors live on the generator's device).
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta parameters must be positive, got ({alpha}, {beta})")
    device = generator.device
    x = torch._standard_gamma(torch.full((n,), float(alpha), device=device), generator=generator)
    y = torch._standard_gamma(torch.full((n,), float(beta), device=device), generator=generator)
    # Gamma draws with shape >= 1 are positive almost surely; the floor only guards shapes << 1.
    return x / (x + y).clamp_min(torch.finfo(x.dtype).tiny)


def sample_renoise_times(n: int, k: int, dmd_cfg: DmdSection, dynars_cfg: DynaRSSection,
                         generator: torch.Generator) -> torch.Tensor:
    """Renoise times for the DMD loss (and the fake-score update, as in the authors' code) at step k.

    t = t_min + (t_max - t_min) u with u ~ Beta(dynars_beta_params(k)), or u ~ U(0, 1) once the Beta is
    flat. Returns float32 [n] on the generator's device; the same generator state gives the same times.
    """
    alpha, beta = dynars_beta_params(k, dynars_cfg)
    if alpha == 1.0 and beta == 1.0:
        u = torch.rand(n, generator=generator, device=generator.device)
    else:
        u = sample_beta(alpha, beta, n, generator)
    return dmd_cfg.t_min + (dmd_cfg.t_max - dmd_cfg.t_min) * u.float()


def dynadg_real_scale(k: int, cfg: DynaDGSection) -> float:
    """Guidance-LoRA scale s_r(k) at which the shared guidance network acts as the real score.

    s_r(k) = s_r0 * 0.5 (1 + cos(pi k / K_dg)) for k < K_dg, else 0 (0 throughout when disabled).
    Early on the "real" distribution leans toward the student's so both overlap and the DMD gradient is
    reliable; at scale 0 the real score is exactly the teacher.
    """
    _check_step(k)
    if not cfg.enabled or k >= cfg.steps:
        return 0.0
    return cfg.scale * _cosine_decay(k / cfg.steps)


def cfg_scale_draw(w0: float, jitter: float, generator: torch.Generator) -> float:
    """Real-score CFG scale for one step, w ~ U[w0 - jitter, w0 + jitter] (DMDR authors: jitter 0.5).

    Always consumes one draw, so the generator stream does not depend on the jitter setting.
    """
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    u = torch.rand((), generator=generator, device=generator.device).item()
    return w0 + jitter * (2.0 * u - 1.0)
