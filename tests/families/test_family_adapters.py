"""Each family loaded from a tiny saved pipeline through `load_family`, checked against diffusers itself."""

import subprocess
import sys

import pytest
import torch
from family_helpers import RESOLUTION, T5_TOKENS, load

from dmdr_cli.families import FAMILIES, FluxFamily, SD3Family, SDFamily, SDXLFamily
from dmdr_cli.families.base import Cond, Guidance

PROMPTS = ["a red cat", "two blue cubes on the left of a dog"]
VARIANTS = ["sd", "sd-pixel", "sdxl", "sd3", "sd3-no-t5", "flux-schnell"]  # flux-dev embeds guidance: no CFG


def pipeline(folder):
    """The diffusers pipeline itself, the reference for conditioning and sampling."""
    import json

    from diffusers import DiffusionPipeline

    index = json.loads((folder / "model_index.json").read_text())
    absent = {name: None for name, entry in index.items() if isinstance(entry, list) and entry[1] is None}
    return DiffusionPipeline.from_pretrained(folder, **absent)


def test_importing_families_does_not_import_diffusers():
    code = ("import sys, dmdr_cli.families, dmdr_cli.sampling; "
            "heavy = [m for m in ('diffusers', 'transformers') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry():
    assert FAMILIES == {"sd": SDFamily, "sdxl": SDXLFamily, "sd3": SD3Family, "flux": FluxFamily}
    assert (SDFamily.denoiser_subfolder, SD3Family.denoiser_subfolder) == ("unet", "transformer")
    assert SDXLFamily.pipeline_class == "StableDiffusionXLPipeline"


@pytest.mark.parametrize("variant, latent_shape", [
    ("sd", (4, 8, 8)), ("sd-pixel", (3, 16, 16)), ("sdxl", (4, 8, 8)), ("sd3", (16, 8, 8)), ("flux", (16, 8, 8))])
def test_latent_geometry(loaded, variant, latent_shape):
    family = loaded(variant)
    assert family.noise(2, RESOLUTION, RESOLUTION).shape == (2, *latent_shape)


def test_sd_prompts_match_the_pipeline(loaded, folders):
    cond = loaded("sd").encode_prompts(PROMPTS)
    assert set(cond) == {"text"} and cond["text"].shape == (2, 16, 16)
    expected, _ = pipeline(folders["sd"]).encode_prompt(PROMPTS, "cpu", 1, False)
    torch.testing.assert_close(cond["text"], expected)


def test_sdxl_prompts_match_the_pipeline(loaded, folders):
    cond = loaded("sdxl").encode_prompts(PROMPTS)
    assert {k: tuple(v.shape) for k, v in cond.items()} == {"text": (2, 16, 16), "pooled": (2, 8), "time_ids": (2, 6)}
    text, _, pooled, _ = pipeline(folders["sdxl"]).encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond["text"], text)
    torch.testing.assert_close(cond["pooled"], pooled)
    assert cond["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * 2


@pytest.mark.parametrize("variant", ["sd3", "sd3-no-t5"])
def test_sd3_prompts_match_the_pipeline(loaded, folders, variant):
    cond = loaded(variant).encode_prompts(PROMPTS)
    assert {k: tuple(v.shape) for k, v in cond.items()} == {"text": (2, 16 + T5_TOKENS, 32), "pooled": (2, 16)}
    text, _, pooled, _ = pipeline(folders[variant]).encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_TOKENS)
    torch.testing.assert_close(cond["text"], text)
    torch.testing.assert_close(cond["pooled"], pooled)
    if variant == "sd3-no-t5":
        assert cond["text"][:, 16:].abs().max() == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_cfg_is_uncond_plus_scale_times_difference(loaded, variant):
    family = loaded(variant)
    cond, uncond = family.encode_prompts(PROMPTS), family.unconditional()
    x = family.noise(2, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.9, 0.5])
    with torch.no_grad():
        x0_c = family.predict_x0(family.denoiser, x, t, cond)
        x0_u = family.predict_x0(family.denoiser, x, t, uncond.expand_to(2))
        x0_cfg = family.predict_x0(family.denoiser, x, t, cond, Guidance(4.5, uncond))
    assert (x0_c - x0_u).abs().max() > 1e-4  # the prompt matters, so the check below has teeth
    torch.testing.assert_close(x0_cfg, x0_u + 4.5 * (x0_c - x0_u), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["sd", "sdxl", "sd3"])
def test_forward_calls_the_denoiser_with_the_model_timestep(loaded, variant):
    family = loaded(variant)
    cond = family.encode_prompts(PROMPTS[:1])
    x = family.noise(1, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.749])
    net = family.denoiser
    with torch.no_grad():
        out = family.forward(net, x, t, cond)
        if variant == "sd3":
            ref = net(x, timestep=torch.tensor([749.0]), encoder_hidden_states=cond["text"],
                      pooled_projections=cond["pooled"]).sample
        elif variant == "sdxl":
            ref = net(x, 749, cond["text"], added_cond_kwargs={"text_embeds": cond["pooled"],
                                                                "time_ids": cond["time_ids"]}).sample
        else:
            ref = net(x, 749, cond["text"]).sample
    torch.testing.assert_close(out, ref)


def test_forward_casts_inputs_to_the_network_dtype(folders):
    family = load("sd", folders["sd"], dtype=torch.bfloat16, with_vae=False)
    cond = family.encode_prompts(PROMPTS[:1])
    x = family.noise(1, RESOLUTION, RESOLUTION)  # float32
    with torch.no_grad():
        assert family.forward(family.denoiser, x, torch.tensor([0.5]), cond).dtype == torch.bfloat16
        assert family.predict_x0(family.denoiser, x, torch.tensor([0.5]), cond).dtype == torch.float32


def test_student_times(loaded):
    sd, sd3 = loaded("sd"), loaded("sd3")
    assert sd.student_times(4) == pytest.approx([0.999, 0.749, 0.499, 0.249])
    assert sd.student_times(1) == [0.999]
    assert sd.student_times(1, [0.399]) == [0.399]
    assert sd.schedule.model_timestep(torch.tensor(sd.student_times(1, [0.399]))).tolist() == [399]
    assert sd3.flow_shift == 3.0  # read from the saved FlowMatchEulerDiscreteScheduler config
    assert sd3.student_times(4) == pytest.approx([1.0, 0.900, 0.750, 0.501], abs=5e-4)
    assert sd3.student_times(4, shift=5.0) == pytest.approx([1.0, 0.938, 0.834, 0.626], abs=5e-4)
    with pytest.raises(ValueError):
        sd.student_times(2, [0.5])


def test_times_for_a_student_section(loaded):
    from dmdr_cli.recipe.schema import StudentSection

    assert loaded("sd3").times_for(StudentSection(steps=4, flow_shift=5.0)) == pytest.approx(
        [1.0, 0.938, 0.834, 0.626], abs=5e-4)
    assert loaded("sdxl").times_for(StudentSection(steps=1, timesteps=[0.399])) == [0.399]
    assert loaded("sd").times_for(StudentSection(steps=4)) == pytest.approx([0.999, 0.749, 0.499, 0.249])


def test_default_samplers(loaded):
    assert (loaded("sd").default_sampler, loaded("sdxl").default_sampler, loaded("sd3").default_sampler) == \
        ("sde", "sde", "ode")


@pytest.mark.parametrize("variant", ["sd", "sdxl", "sd3", "flux"])
def test_decode_uses_the_vae_scaling_and_shift(loaded, variant):
    family = loaded(variant)
    vae = family.components.vae
    latents = torch.randn(2, family.latent_channels, 8, 8, generator=torch.Generator().manual_seed(2),
                          requires_grad=True)
    images = family.decode(latents)
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    shift = vae.config.shift_factor or 0.0
    with torch.no_grad():
        expected = (vae.decode(latents / vae.config.scaling_factor + shift).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected)
    images.mean().backward()  # ReFL backpropagates through decode
    assert latents.grad is not None and latents.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["sd", "sdxl", "sd3"])
def test_encode_images_is_the_scaled_posterior_mean(loaded, variant):
    family = loaded(variant)
    vae = family.components.vae
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    latents = family.encode_images(images)
    assert latents.shape == (2, family.latent_channels, 8, 8)
    with torch.no_grad():
        z = vae.encode(2 * images - 1).latent_dist.mean
    expected = (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)


def test_pixel_space_sd(loaded):
    family = loaded("sd-pixel")
    assert family.pixel_space and family.components.vae is None
    assert (family.latent_channels, family.vae_scale_factor) == (3, 1)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).view(1, 3, 1, 2)
    assert family.decode(x).flatten().tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    images = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(family.decode(family.encode_images(images)), images)


def test_v_prediction_override(folders):
    from dmdr_cli.families import load_family
    from family_helpers import model_section

    family = load_family(model_section("sd", folders["sd"], prediction_type="v_prediction"),
                         with_text_encoders=False, with_vae=False)
    assert family.schedule.prediction == "v_prediction"
    assert family.components.scheduler_config["prediction_type"] == "v_prediction"
    assert load("sd", folders["sd"], with_text_encoders=False, with_vae=False).schedule.prediction == "epsilon"


def test_the_schedule_comes_from_the_scheduler_config(loaded):
    from diffusers import DDIMScheduler

    family = loaded("sd")
    expected = DDIMScheduler.from_config(family.components.scheduler_config).alphas_cumprod.double()
    torch.testing.assert_close(family.schedule.alphas_cumprod, expected)


def test_loading_without_encoders_or_vae(folders):
    family = load("sdxl", folders["sdxl"], with_text_encoders=False, with_vae=False)
    assert family.components.vae is None and family.components.text_encoders == []
    assert (family.latent_channels, family.vae_scale_factor) == (4, 2)  # from the configs alone
    with pytest.raises(RuntimeError, match="text encoders are not loaded"):
        family.encode_prompts(["a cat"])
    with pytest.raises(RuntimeError, match="VAE is not loaded"):
        family.decode(torch.zeros(1, 4, 8, 8))


def test_release_text_encoders_keeps_the_unconditional(folders):
    family = load("sd3", folders["sd3"], with_vae=False)
    uncond = family.unconditional()
    family.release_text_encoders()
    assert family.components.text_encoders == [] and family.components.tokenizers == []
    torch.testing.assert_close(family.unconditional()["text"], uncond["text"])
    with pytest.raises(RuntimeError, match="release_text_encoders"):
        family.encode_prompts(["a cat"])


def test_zeros_unconditional_keeps_time_ids(folders):
    from dmdr_cli.families import load_family
    from family_helpers import model_section

    family = load_family(model_section("sdxl", folders["sdxl"]), with_vae=False, uncond_mode="zeros")
    uncond = family.unconditional()
    assert uncond["text"].abs().max() == 0 and uncond["pooled"].abs().max() == 0
    assert uncond["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]
    assert isinstance(uncond, Cond)


@pytest.mark.parametrize("variant", ["sd", "sdxl", "sd3", "flux"])
def test_lora_targets_name_modules_of_the_denoiser(loaded, variant):
    family = loaded(variant)
    names = [name for name, _ in family.denoiser.named_modules()]
    for target in {*family.generator_lora_targets, *family.guidance_lora_targets}:
        assert any(n == target or n.endswith("." + target) for n in names), target
