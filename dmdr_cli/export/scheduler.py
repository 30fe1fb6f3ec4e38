"""The diffusers scheduler (and pipeline call) that reproduces `dmdr_cli.sampling.sample` for a student.

Which scheduler does what our sampler does (ALGORITHM.md, "Few-step students"), given explicit times:

- eps / v UNet, `sde` (predict x0, renoise to the next time with fresh noise): LCMScheduler. Its step
  is `x -> sqrt(a') (c_out x0 + c_skip x) + sqrt(1 - a') z`; we set `timestep_scaling` so large that
  c_skip = 0 and c_out = 1 in float32 (LCM's default, 10, would mix in c_skip x = 4e-8 x at timestep
  249 and more at small timesteps).
  `original_inference_steps = num_train_timesteps` puts every integer timestep on LCM's training grid
  (no "unexpected results" warnings); its own 4-step spacing is then DMD2's [999, 749, 499, 249].
- eps / v UNet, `ode` (DDIM eta 0 to the next time, x0 at the end): EulerDiscreteScheduler with the
  student's timesteps. Euler in sigma space is DDIM in x space; "leading" spacing makes
  init_noise_sigma = sqrt(sigma_max^2 + 1), so the network sees unit-variance noise, as in training.
- flow (SD3): FlowMatchEulerDiscreteScheduler with `sigmas` = the student times and shift 1 (the
  student's own shift is already in its times; the scheduler would shift them again); `ode` is its
  Euler step, `sde` its `stochastic_sampling` step `(1 - t') x0 + t' z`.

Every scheduler ends with x0 at the last step, as `sample` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LCM_EXACT_TIMESTEP_SCALING = 1e6  # c_skip = 0.25 / ((1e6 t)^2 + 0.25) < 1e-17 for t >= 1

_OFF = dict(use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)


@dataclass(frozen=True)
class StudentScheduler:
    class_name: str
    config: dict  # overrides on top of the teacher's scheduler config
    times_argument: str  # the pipeline argument that selects the student's times: "timesteps" or "sigmas"
    times: list  # its value
    step_noise: str  # "none" (deterministic), "generator" (pass generator=), "global" (torch.manual_seed first)

    @property
    def call(self) -> dict:
        return {self.times_argument: self.times}


def student_scheduler(family, times: list[float], sampler: str) -> StudentScheduler:
    """The scheduler and call of a student with these times and rollout mode (`sde` / `ode`)."""
    # a single step never draws step noise (the last step returns x0), whatever the mode
    stochastic = sampler == "sde" and len(times) > 1
    if family.schedule.prediction == "flow":
        config = dict(shift=1.0, use_dynamic_shifting=False, invert_sigmas=False, shift_terminal=None,
                      stochastic_sampling=sampler == "sde", **_OFF)
        # StableDiffusion3Pipeline does not hand its generator to scheduler.step: the noise is torch's global RNG
        return StudentScheduler("FlowMatchEulerDiscreteScheduler", config, "sigmas", [float(t) for t in times],
                                "global" if stochastic else "none")
    timesteps = [int(t) for t in family.schedule.model_timestep(torch.tensor(times, dtype=torch.float64))]
    prediction = family.schedule.prediction  # the effective one (recipe model.prediction_type may override)
    if sampler == "sde":
        config = dict(prediction_type=prediction, timestep_scaling=LCM_EXACT_TIMESTEP_SCALING,
                      original_inference_steps=family.schedule.num_train_timesteps,
                      clip_sample=False, thresholding=False)
        return StudentScheduler("LCMScheduler", config, "timesteps", timesteps,
                                "generator" if stochastic else "none")
    config = dict(prediction_type=prediction, timestep_spacing="leading", timestep_type="discrete",
                  final_sigmas_type="zero", interpolation_type="linear", **_OFF)
    return StudentScheduler("EulerDiscreteScheduler", config, "timesteps", timesteps, "none")


def build_scheduler(teacher_config: dict, spec: StudentScheduler):
    """The scheduler object: the teacher's training schedule (betas, prediction type) + the student overrides."""
    import inspect

    import diffusers

    cls = getattr(diffusers, spec.class_name)
    accepted = inspect.signature(cls.__init__).parameters  # the teacher's class may have other knobs
    base = {k: v for k, v in teacher_config.items() if k in accepted}
    return cls.from_config({**base, **spec.config})
