"""The pieces of one DMDR training step, written once for every family (x0-space only).

One generator update = `fake_updates_per_generator_update` inner steps (TTUR). Each inner step samples
x0 from the generator and updates the fake score on it; the last inner step also computes the
generator loss L_dmd (+ L_rl) on its x0 before the fake score sees it (ALGORITHM.md, "DMD branch").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..families.base import Cond, Family, Guidance
from ..runtime.precision import autocast
from ..sampling import generator_input
from .loss import dmd_loss, fake_score_loss
from .networks import ScoreNetworks
from .randomness import StepRandomness
from .schedules import cfg_scale_draw, dynadg_real_scale, sample_renoise_times


@dataclass
class StepContext:
    family: Family
    nets: ScoreNetworks
    cfg: object  # the Recipe
    device: torch.device
    amp_dtype: torch.dtype | None
    student_times: list[float]
    sampler: str  # "sde" | "ode"
    uncond: Cond  # batch-1 unconditional conditioning for the real score's CFG

    def amp(self):
        return autocast(self.device, self.amp_dtype)


def _times(value: float | torch.Tensor, batch: int, device) -> torch.Tensor:
    return torch.full((batch,), float(value), device=device) if not torch.is_tensor(value) else value.to(device)


def generator_sample(ctx: StepContext, cond: Cond, rng: StepRandomness, with_grad: bool) -> tuple[torch.Tensor, dict]:
    """x0 from the generator at a student step drawn uniformly (the same on all processes)."""
    batch = cond.batch_size
    times = ctx.student_times
    k = int(torch.randint(len(times), (), generator=rng.shared("student_step")))
    noise = rng.randn(ctx.family.latent_shape(ctx.cfg.model.resolution), "latent")
    net = ctx.nets.as_generator()
    with torch.no_grad(), ctx.amp():
        x_in = generator_input(ctx.family, net, noise, cond, times, ctx.sampler, k,
                               lambda like: rng.randn_like(like, "rollout"))
    t = _times(times[k], batch, ctx.device)
    with torch.set_grad_enabled(with_grad), ctx.amp():
        x0 = ctx.family.predict_x0(net, x_in, t, cond)
    return x0.float(), {"student_step": k}


def renoise_times(ctx: StepContext, rng: StepRandomness, k: int, purpose: str) -> torch.Tensor:
    """Per-sample renoise times from the DynaRS schedule at generator step k (uniform when it is off/over)."""
    draws = [sample_renoise_times(1, k, ctx.cfg.dmd, ctx.cfg.coldstart.dynars, g)
             for g in rng.per_sample_generators(purpose)]
    return ctx.family.renoise_times(torch.cat(draws).to(ctx.device).float())


def dmd_generator_loss(ctx: StepContext, x0_g: torch.Tensor, cond: Cond, rng: StepRandomness, k: int) -> tuple[torch.Tensor, dict]:
    """L_dmd on the generator's x0: real score (teacher + guidance LoRA at s_r(k), CFG) minus fake score."""
    t = renoise_times(ctx, rng, k, "renoise_t")
    x_t = ctx.family.schedule.renoise(x0_g.detach(), t, rng.randn_like(x0_g, "renoise"))
    scale_r = 0.0 if ctx.cfg.guidance.layout == "dmd2" else dynadg_real_scale(k, ctx.cfg.coldstart.dynadg)
    w = cfg_scale_draw(ctx.cfg.guidance.scale, ctx.cfg.guidance.jitter, rng.shared("cfg"))
    with torch.no_grad(), ctx.amp():
        x0_real = ctx.family.predict_x0(ctx.nets.as_real(scale_r), x_t, t, cond, Guidance(w, ctx.uncond))
        x0_fake = ctx.family.predict_x0(ctx.nets.as_fake(), x_t, t, ctx.family.fake_score_cond(cond))
    loss, stats = dmd_loss(x0_g, x0_real.float(), x0_fake.float())
    stats.update({"real_lora_scale": scale_r, "cfg_scale": w, "renoise_t_mean": t.mean(),
                  "renoise_t_min": t.min(), "renoise_t_max": t.max()})  # tensors: no host sync per step
    return loss, stats


def fake_score_times(ctx: StepContext, rng: StepRandomness, k: int) -> torch.Tensor:
    """DMDR: the DMD loss's times (DynaRS on [t_min, t_max], as the authors' code draws them); layout dmd2:
    uniform over the whole training range, as DMD2's fake-score loss draws its timesteps (0..999)."""
    if ctx.cfg.guidance.layout == "dmd2":
        return ctx.family.renoise_times(rng.per_sample_uniform("fake_t").to(ctx.device).float())
    return renoise_times(ctx, rng, k, "fake_t")


def fake_score_step_loss(ctx: StepContext, x0_g: torch.Tensor, cond: Cond, rng: StepRandomness, k: int,
                         stats: dict | None = None) -> torch.Tensor:
    """Denoising loss of the fake score on stopgrad(x0_g), in the family's own parameterisation.

    With `stats`, also logs the teacher's loss on the same noisy inputs (one extra no-grad pass): a fake
    score that tracks the generator's distribution denoises its samples better than the teacher does,
    so `fake_to_teacher_loss` (same inputs) < 1 says it keeps up, and > 1 that it has fallen behind.
    """
    x0 = x0_g.detach()
    cond = ctx.family.fake_score_cond(cond)  # the teacher's loss below is measured on the same inputs
    t = fake_score_times(ctx, rng, k)
    noise = rng.randn_like(x0, "fake_renoise")
    x_t = ctx.family.schedule.renoise(x0, t, noise)
    target = ctx.family.schedule.target(x0, noise, t).float()
    if stats is not None:  # before the fake pass: a checkpointed backward recomputes with the live adapter
        with torch.no_grad(), ctx.amp():
            teacher_loss = fake_score_loss(ctx.family.forward(ctx.nets.as_real(0.0), x_t, t, cond).float(), target)
    with ctx.amp():
        pred = ctx.family.forward(ctx.nets.as_fake(), x_t, t, cond)
    loss = fake_score_loss(pred.float(), target)
    if stats is not None:
        stats["teacher_loss_on_generator"] = teacher_loss
        stats["fake_to_teacher_loss"] = loss.detach() / teacher_loss.clamp_min(1e-12)
    return loss
