"""Rollouts (dmdr_cli.sampling) against diffusers' own schedulers and pipelines on the same tiny weights."""

import pytest
import torch
from family_helpers import RESOLUTION, T5_TOKENS
from test_family_adapters import PROMPTS, pipeline

from dmdr_cli.families.base import Guidance
from dmdr_cli.sampling import generator_input, sample, teacher_sample


def keyed_noise(seed: int):
    """A noise_fn drawing from its own seeded generator, as callers key noise per sample."""
    g = torch.Generator().manual_seed(seed)
    return lambda like: torch.randn(like.shape, generator=g).to(like)


def no_noise(like):
    raise AssertionError("a deterministic rollout asked for noise")


def setup(family, batch=2, seed=0):
    cond = family.encode_prompts(PROMPTS[:batch])
    noise = family.noise(batch, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(seed))
    return cond, noise


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_ode_rollout_is_diffusers_ddim(loaded, variant):
    """Each deterministic step equals DDIMScheduler.step (eta 0) from the model's own alphas, and the
    rollout's final x0 equals DDIM's last pred_original_sample."""
    from diffusers import DDIMScheduler

    family = loaded(variant)
    cond, x = setup(family)
    ddim = DDIMScheduler.from_config(family.components.scheduler_config, timestep_spacing="trailing",
                                     clip_sample=False)
    ddim.set_timesteps(4)
    times = family.student_times(4)
    assert ddim.timesteps.tolist() == [999, 749, 499, 249]
    with torch.no_grad():
        for k, timestep in enumerate(ddim.timesteps):
            t = torch.full((2,), times[k])
            eps = family.forward(family.denoiser, x, t, cond)
            ref = ddim.step(eps, timestep, x)
            x0 = family.predict_x0(family.denoiser, x, t, cond)
            torch.testing.assert_close(x0, ref.pred_original_sample, rtol=1e-4, atol=1e-4)
            if k + 1 < len(times):
                ours = family.schedule.ddim_step(x, x0, t, torch.full((2,), times[k + 1]))
                torch.testing.assert_close(ours, ref.prev_sample, rtol=1e-4, atol=1e-4)
            x = ref.prev_sample
        _, noise = setup(family)
        final = sample(family, family.denoiser, noise, cond, times, "ode", no_noise)
    torch.testing.assert_close(final, ref.pred_original_sample, rtol=1e-3, atol=1e-3)


def test_ode_rollout_is_diffusers_flow_match_euler(loaded):
    from diffusers import FlowMatchEulerDiscreteScheduler

    family = loaded("sd3")
    cond, noise = setup(family)
    euler = FlowMatchEulerDiscreteScheduler.from_config(family.components.scheduler_config)
    euler.set_timesteps(4)
    times = euler.sigmas[:-1].tolist()  # shift-3 sigmas; the last step lands on sigma 0
    x = noise
    with torch.no_grad():
        for k, timestep in enumerate(euler.timesteps):
            v = family.forward(family.denoiser, x, torch.full((2,), times[k]), cond)
            x = euler.step(v, timestep, x).prev_sample
        final = sample(family, family.denoiser, noise, cond, times, "ode", no_noise)
    torch.testing.assert_close(final, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["sd", "sd3"])
def test_sde_step_is_the_renoise_formula(loaded, variant):
    family = loaded(variant)
    cond, noise = setup(family)
    times = family.student_times(4)
    with torch.no_grad():
        x1 = generator_input(family, family.denoiser, noise, cond, times, "sde", 1, keyed_noise(7))
        x0 = family.predict_x0(family.denoiser, noise, torch.full((2,), times[0]), cond)
    fresh = keyed_noise(7)(x0)
    if variant == "sd":  # sqrt(a_749) x0 + sqrt(1 - a_749) n
        a = family.schedule.alphas_cumprod[749].item()
        expected = a ** 0.5 * x0 + (1 - a) ** 0.5 * fresh
    else:  # (1 - t) x0 + t n at t = times[1]
        expected = (1 - times[1]) * x0 + times[1] * fresh
    torch.testing.assert_close(x1, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["sde", "ode"])
def test_sample_is_deterministic_given_the_noise(loaded, mode):
    family = loaded("sdxl")
    cond, noise = setup(family)
    times = family.student_times(3)
    with torch.no_grad():
        a = sample(family, family.denoiser, noise, cond, times, mode, keyed_noise(1))
        b = sample(family, family.denoiser, noise.clone(), cond, times, mode, keyed_noise(1))
        c = sample(family, family.denoiser, noise, cond, times, mode, keyed_noise(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if mode == "sde":
        assert (a - c).abs().max() > 1e-4  # fresh noise enters every sde step
    else:
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_one_step_sample_is_one_x0_prediction(loaded):
    family = loaded("sd")
    cond, noise = setup(family)
    with torch.no_grad():
        x0 = sample(family, family.denoiser, noise, cond, [0.399], "sde", no_noise)
        expected = family.predict_x0(family.denoiser, noise, torch.full((2,), 0.399), cond)
    torch.testing.assert_close(x0, expected)


def test_generator_input_sde_rolls_out_k_steps(loaded):
    family = loaded("sd")
    cond, noise = setup(family)
    times = family.student_times(4)
    net = family.denoiser
    torch.testing.assert_close(generator_input(family, net, noise, cond, times, "sde", 0, no_noise), noise)
    got = generator_input(family, net, noise, cond, times, "sde", 2, keyed_noise(3))
    assert not got.requires_grad
    fresh, x = keyed_noise(3), noise
    with torch.no_grad():
        for j in range(2):
            x0 = family.predict_x0(net, x, torch.full((2,), times[j]), cond)
            x = family.schedule.renoise(x0, torch.full((2,), times[j + 1]), fresh(x0))
    torch.testing.assert_close(got, x)


def test_generator_input_ode_renoises_the_final_x0(loaded):
    family = loaded("sd3")
    cond, noise = setup(family)
    times = family.student_times(4)
    net = family.denoiser
    torch.testing.assert_close(generator_input(family, net, noise, cond, times, "ode", 0, no_noise), noise)
    got = generator_input(family, net, noise, cond, times, "ode", 2, keyed_noise(4))
    with torch.no_grad():
        final = sample(family, net, noise, cond, times, "ode", no_noise)
    fresh = keyed_noise(4)(final)
    torch.testing.assert_close(got, (1 - times[2]) * final + times[2] * fresh, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        generator_input(family, net, noise, cond, times, "ode", 4, no_noise)
    with pytest.raises(ValueError, match="auto"):
        sample(family, net, noise, cond, times, "auto", no_noise)


def pipeline_kwargs(variant, cond, uncond):
    kwargs = dict(prompt_embeds=cond["text"], negative_prompt_embeds=uncond["text"])
    if "pooled" in cond:
        kwargs.update(pooled_prompt_embeds=cond["pooled"], negative_pooled_prompt_embeds=uncond["pooled"])
    if variant == "sd3":
        kwargs["max_sequence_length"] = T5_TOKENS
    return kwargs


@pytest.mark.parametrize("variant", ["sd", "sdxl", "sd3", "sd-pixel"])
def test_teacher_sample_matches_the_diffusers_pipeline(loaded, folders, variant):
    """Same scheduler (DDIM for the tiny sd, Euler for sdxl, FlowMatchEuler for sd3), same CFG, same latents."""
    family = loaded(variant)
    cond, noise = setup(family, batch=1)
    uncond = family.unconditional()
    with torch.no_grad():
        ours = teacher_sample(family, family.denoiser, noise, cond, steps=3, guidance=Guidance(3.0, uncond))
    pipe = pipeline(folders[variant])
    ref = pipe(**pipeline_kwargs(variant, cond, uncond), guidance_scale=3.0, num_inference_steps=3,
               latents=noise.clone(), height=RESOLUTION, width=RESOLUTION, output_type="latent").images
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_teacher_sample_of_a_v_prediction_model_matches_the_pipeline(folders):
    """The x0 -> v conversion the scheduler needs (an eps model's weights, run as if it predicted v)."""
    from diffusers import DDIMScheduler
    from family_helpers import model_section

    from dmdr_cli.families import load_family

    family = load_family(model_section("sd", folders["sd"], prediction_type="v_prediction"), with_vae=False)
    cond, noise = setup(family, batch=1)
    uncond = family.unconditional()
    with torch.no_grad():
        ours = teacher_sample(family, family.denoiser, noise, cond, steps=3, guidance=Guidance(2.0, uncond))
    pipe = pipeline(folders["sd"])
    pipe.scheduler = DDIMScheduler.from_config(family.components.scheduler_config)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ref = pipe(**pipeline_kwargs("sd", cond, uncond), guidance_scale=2.0, num_inference_steps=3,
               latents=noise.clone(), height=RESOLUTION, width=RESOLUTION, output_type="latent").images
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
