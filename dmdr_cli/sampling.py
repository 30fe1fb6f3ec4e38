"""Rollouts of few-step students and multi-step teachers, written once for every family.

Everything here sees a `Family` only through `predict_x0` and its x0-space `schedule` (ALGORITHM.md,
"Few-step students and backward simulation"):

- `sde` (DMD2's backward simulation): predict x0, renoise it to the next student time with fresh noise.
- `ode` (DMDR's SD3 scripts): the deterministic step that keeps the implied noise (DDIM eta 0 for
  eps / v models, Euler `x + (t_next - t) v` for flow).

Times are floats in [0, 1] (1 = noise), first = the one fed pure noise. `noise_fn(like)` returns fresh
standard normal noise shaped like `like`; callers key it per sample so rollouts are reproducible.
Gradients: `sample` and `teacher_sample` follow the caller's grad mode; `generator_input` never records.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .families.base import Cond, Family, Guidance

NoiseFn = Callable[[torch.Tensor], torch.Tensor]
MODES = ("sde", "ode")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"rollout mode must be one of {MODES}, not {mode!r} (resolve 'auto' with "
                         f"family.default_sampler first)")


def _time(t: float, like: torch.Tensor) -> torch.Tensor:
    """Per-sample time tensor [B]."""
    return torch.full((like.shape[0],), float(t), device=like.device, dtype=torch.float32)


def _step(family: Family, x: torch.Tensor, x0: torch.Tensor, t: float, t_next: float, mode: str,
          noise_fn: NoiseFn) -> torch.Tensor:
    """From x at t, with the model's x0, to the input at t_next."""
    if mode == "sde":
        return family.schedule.renoise(x0, _time(t_next, x0), noise_fn(x0))
    return family.schedule.ddim_step(x, x0, _time(t, x), _time(t_next, x))


def sample(family: Family, net: torch.nn.Module, noise: torch.Tensor, cond: Cond, times: Sequence[float],
           mode: str, noise_fn: NoiseFn, guidance: Guidance | None = None) -> torch.Tensor:
    """Few-step sampling: start from `noise` at times[0], return the x0 of the last step (float32)."""
    _check_mode(mode)
    x = noise.float()
    for k, t in enumerate(times):
        x0 = family.predict_x0(net, x, _time(t, x), cond, guidance)
        if k + 1 < len(times):
            x = _step(family, x, x0, t, times[k + 1], mode, noise_fn)
    return x0


@torch.no_grad()
def generator_input(family: Family, net: torch.nn.Module, noise: torch.Tensor, cond: Cond,
                    times: Sequence[float], mode: str, k: int, noise_fn: NoiseFn) -> torch.Tensor:
    """The input the generator is trained on at student step k (its time is times[k]).

    sde: the state after rolling out k steps from `noise` (k = 0: the noise itself).
    ode: the whole deterministic trajectory's final x0, renoised to times[k] with fresh noise; k = 0 is the
    pure noise itself (at 0.999 an eps model would otherwise see a trace of signal it never sees at sampling).
    """
    _check_mode(mode)
    if not 0 <= k < len(times):
        raise ValueError(f"student step {k} outside 0..{len(times) - 1}")
    x = noise.float()
    if mode == "sde":
        for j in range(k):
            x0 = family.predict_x0(net, x, _time(times[j], x), cond)
            x = _step(family, x, x0, times[j], times[j + 1], mode, noise_fn)
        return x
    if k == 0:
        return x
    final_x0 = sample(family, net, x, cond, times, "ode", noise_fn)
    return family.schedule.renoise(final_x0, _time(times[k], final_x0), noise_fn(final_x0))


def teacher_scheduler(family: Family, name: str | None = None):
    """A diffusers scheduler from the model's own scheduler config (or the named class, same config).

    The UNet families' config carries the effective prediction type (model.prediction_type override).
    """
    import diffusers

    config = family.components.scheduler_config
    cls_name = name or config.get("_class_name")
    cls = getattr(diffusers, cls_name, None) if cls_name else None
    if cls is None:
        raise ValueError(f"unknown diffusers scheduler {cls_name!r}")
    return cls.from_config(config)


def teacher_sample(family: Family, net: torch.nn.Module, noise: torch.Tensor, cond: Cond, steps: int,
                   guidance: Guidance | None = None, scheduler: str | None = None) -> torch.Tensor:
    """Multi-step teacher sampling as the diffusers pipelines do it, with CFG; returns final latents.

    The scheduler (the model's own: DDIM / Euler for UNets, FlowMatchEuler for SD3) chooses the times and
    steps; the network is queried through `predict_x0` (CFG in x0-space, which equals CFG on the raw
    output), and its x0 converted back to the output the scheduler expects via the implied noise.
    """
    sched = teacher_scheduler(family, scheduler)
    family.set_teacher_timesteps(sched, steps, noise)
    schedule = family.schedule
    # Euler samples in sigma-space (x0 + sigma n, init sigma ~14.6 for SD): scale_model_input maps it to
    # the network's x_t; flow-matching schedulers have neither (their state already is x_t)
    x = noise.float() * getattr(sched, "init_noise_sigma", 1.0)
    scale_input = getattr(sched, "scale_model_input", lambda sample, timestep: sample)
    for timestep in sched.timesteps:
        x_in = scale_input(x, timestep)
        t = _time(float(timestep) / schedule.num_train_timesteps, x)
        x0 = family.predict_x0(net, x_in, t, cond, guidance)
        out = schedule.target(x0, schedule.noise_from(x_in, x0, t), t)
        x = sched.step(out, timestep, x, return_dict=False)[0]
    return x
