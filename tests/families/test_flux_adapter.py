"""The FLUX.1 adapter against FluxPipeline itself: conditioning, packing, the resolution shift, embedded guidance and
the teacher's sampling; schnell (no guidance embedding) takes plain CFG. Tiny dev and schnell folders (16 px)."""

import pytest
import torch
from family_helpers import RESOLUTION, T5_TOKENS, model_section

from dmdr_cli.errors import DmdrError
from dmdr_cli.families.base import Guidance
from dmdr_cli.families.flux import calculate_shift, pack, unpack

PROMPTS = ["a red cat", "two blue cubes on the left of a dog"]


def flux(folder, **model):
    """The adapter without text encoders or VAE, model section fields overridden."""
    from dmdr_cli.families import load_family

    return load_family(model_section("flux", folder, **model), with_text_encoders=False, with_vae=False)


@pytest.fixture(scope="module")
def pipe(folders):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(folders["flux"])


def test_prompts_match_the_pipeline(loaded, pipe):
    family = loaded("flux")
    cond = family.encode_prompts(PROMPTS)
    assert {k: tuple(v.shape) for k, v in cond.items()} == {"text": (2, T5_TOKENS, 32), "pooled": (2, 8),
                                                            "guidance": (2,)}
    text, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=T5_TOKENS)
    torch.testing.assert_close(cond["text"], text)
    torch.testing.assert_close(cond["pooled"], pooled)
    assert text_ids.abs().max() == 0 and cond["guidance"].tolist() == [3.5, 3.5]  # FluxPipeline's default
    assert "guidance" not in loaded("flux-schnell").encode_prompts(PROMPTS)


def test_default_t5_lengths_are_the_pipelines(folders):
    dev, schnell = flux(folders["flux"], max_text_tokens=None), flux(folders["flux-schnell"], max_text_tokens=None)
    assert (dev.max_text_tokens, schnell.max_text_tokens) == (512, 256)


def test_packing_round_trip_and_the_pipelines_order(pipe):
    x = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    packed = pack(x)
    assert packed.shape == (2, 4 * 6, 64)
    torch.testing.assert_close(packed, pipe._pack_latents(x, 2, 16, 8, 12), rtol=0, atol=0)
    assert torch.equal(unpack(packed, 8, 12), x)
    torch.testing.assert_close(unpack(packed, 8, 12), pipe._unpack_latents(packed, 16, 24, 2), rtol=0, atol=0)


def test_forward_is_the_transformer_called_as_the_pipeline_calls_it(loaded, pipe):
    family = loaded("flux")
    cond = family.encode_prompts(PROMPTS)
    x = family.noise(2, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        out = family.forward(family.denoiser, x, t, cond)
        ref = pipe.transformer(hidden_states=pipe._pack_latents(x, 2, 16, 8, 8), timestep=t * 1000 / 1000,
                               guidance=torch.full((2,), 3.5), pooled_projections=cond["pooled"],
                               encoder_hidden_states=cond["text"], txt_ids=torch.zeros(T5_TOKENS, 3),
                               img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)).sample
    torch.testing.assert_close(out, pipe._unpack_latents(ref, 16, 16, 2))


@pytest.mark.parametrize("tokens", [16, 1024, 4096])
def test_student_times_use_the_pipelines_shift(tokens):
    """The SD3-style shift e^mu with mu from diffusers' own calculate_shift equals the scheduler's dynamic shift of
    the same base grid (FLUX.1-dev's published scheduler config)."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as pipeline_shift
    from fixtures.tiny_models import FLUX_DEV_SCHEDULER

    from dmdr_cli.families.flux import resolution_shift
    from dmdr_cli.families.schedules import shifted_flow_times

    mu = pipeline_shift(tokens, 256, 4096, 0.5, 1.15)
    assert calculate_shift(tokens, FLUX_DEV_SCHEDULER) == pytest.approx(mu, abs=1e-12)
    base = np.linspace(1.0, 0.001, 5)[:4]  # DMDR's 4-step grid
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    scheduler.set_timesteps(sigmas=base, mu=mu)
    ours = shifted_flow_times(4, resolution_shift(FLUX_DEV_SCHEDULER, tokens))
    assert ours == pytest.approx(scheduler.sigmas[:-1].tolist(), abs=1e-6)
    if tokens == 4096:  # 1024 px: mu = 1.15, shift e^1.15 = 3.158
        assert resolution_shift(FLUX_DEV_SCHEDULER, tokens) == pytest.approx(3.158, abs=1e-3)


def test_the_family_shift_follows_model_resolution(folders):
    at16, at32 = flux(folders["flux"]), flux(folders["flux"], resolution=32)
    # 16 px -> 4x4 = 16 tokens, 32 px -> 64 tokens (VAE factor 2, 2x2 packing)
    assert at16.flow_shift == pytest.approx(torch.tensor(calculate_shift(16, at16.components.scheduler_config)).exp())
    assert at32.flow_shift > at16.flow_shift
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    s = at32.flow_shift
    torch.testing.assert_close(at32.renoise_times(t), s * t / (1 + (s - 1) * t))
    schnell = flux(folders["flux-schnell"])
    assert schnell.flow_shift == 1.0 and torch.equal(schnell.renoise_times(t), t)
    assert at32.student_times(2, shift=1.0) == pytest.approx([1.0, 0.5005])


def test_embedded_guidance_is_one_pass_at_the_value(loaded):
    """dev: Guidance(w) = the transformer told w (one call, the unconditional never used); the fake score's
    conditioning carries the fake value (schnell's CFG: test_family_adapters' CFG test)."""
    family = loaded("flux")
    cond, uncond = family.encode_prompts(PROMPTS), family.unconditional()
    x = family.noise(2, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.8, 0.3])
    calls = []
    hook = family.denoiser.register_forward_hook(lambda m, args, kwargs_out: calls.append(1))
    try:
        with torch.no_grad():
            guided = family.predict_x0(family.denoiser, x, t, cond, Guidance(5.0, uncond))
            assert len(calls) == 1
            told = family.predict_x0(family.denoiser, x, t, family.with_guidance_value(cond, 5.0))
            plain = family.predict_x0(family.denoiser, x, t, cond)
    finally:
        hook.remove()
    assert torch.equal(guided, told) and (guided - plain).abs().max() > 1e-4
    family.use_guidance_values(3.0, 1.5)
    try:
        assert family.encode_prompts(PROMPTS[:1])["guidance"].tolist() == [3.0]
        assert family.fake_score_cond(cond)["guidance"].tolist() == [1.5, 1.5]
        assert family.pipeline_arguments() == {"guidance_scale": 3.0, "max_sequence_length": T5_TOKENS}
    finally:
        family.use_guidance_values(None, None)
    assert loaded("flux-schnell").pipeline_arguments()["guidance_scale"] == 1.0


def test_teacher_sampling_is_the_pipelines(loaded, pipe):
    """teacher_sample (FlowMatchEuler with the pipeline's sigmas and mu, guidance 4.0 embedded) = FluxPipeline."""
    from dmdr_cli.sampling import teacher_sample

    family = loaded("flux")
    noise = family.noise(2, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(4))
    cond = family.encode_prompts(PROMPTS)
    with torch.no_grad():
        ours = teacher_sample(family, family.denoiser, noise, cond, 3, Guidance(4.0, family.unconditional()))
        theirs = pipe(PROMPTS, latents=pack(noise), num_inference_steps=3, guidance_scale=4.0, height=16, width=16,
                      max_sequence_length=T5_TOKENS, output_type="latent").images
    torch.testing.assert_close(ours, unpack(theirs, 8, 8), rtol=1e-5, atol=1e-5)


def test_sizes_the_packing_cannot_take_are_refused(folders, loaded):
    with pytest.raises(DmdrError, match="multiples of 4 px"):
        flux(folders["flux"], resolution=18)
    with pytest.raises(DmdrError, match="height 18"):
        loaded("flux").noise(1, 18, 16)


def test_embedded_guidance_values_are_refused_where_nothing_embeds_them(folders):
    from dmdr_cli.families import load_family
    from dmdr_cli.recipe import validate

    with pytest.raises(DmdrError, match="no guidance embedding"):
        load_family(model_section("flux", folders["flux-schnell"]), with_text_encoders=False, with_vae=False,
                    guidance_values=(3.5, None))
    with pytest.raises(DmdrError, match="student.embedded_guidance applies to"):
        validate({"model": {"family": "sd3", "pretrained": "x"}, "student": {"embedded_guidance": 3.5}})
