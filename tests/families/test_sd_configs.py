"""The sd adapter on SD1.5's and SD2.1's real configurations: their published scheduler configs verbatim (SD1.5:
PNDM, eps; SD2.1: DDIM, v-prediction) and UNets with their structural settings at tiny widths, loaded through the
same path as the real checkpoints and checked against StableDiffusionPipeline itself; the real-size UNets (built
on the meta device) against the default LoRA targets and the planner's published counts."""

import pytest
import torch

from dmdr_cli.families import load_family
from dmdr_cli.families.base import Guidance
from dmdr_cli.recipe.schema import ModelSection

# scheduler/scheduler_config.json of stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}
SD21_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
                  "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
                  "steps_offset": 1, "trained_betas": None}
# structural UNet settings of each (SD2.1: linear projections, per-level heads, upcast attention)
SD15_UNET = dict(attention_head_dim=8)
SD21_UNET = dict(attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True)
VERSIONS = {"sd15": (SD15_SCHEDULER, SD15_UNET), "sd21": (SD21_SCHEDULER, SD21_UNET)}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """{version: (folder, pipeline)}: tiny StableDiffusionPipelines with the real scheduler configs."""
    import diffusers
    from diffusers import StableDiffusionPipeline
    from fixtures.tiny_models import clip_text_encoder, clip_tokenizer, tiny_unet, tiny_vae

    built = {}
    for version, (scheduler_config, unet_config) in VERSIONS.items():
        config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(config)
        pipe = StableDiffusionPipeline(
            vae=tiny_vae(scaling_factor=0.18215), text_encoder=clip_text_encoder(16), tokenizer=clip_tokenizer(),
            unet=tiny_unet(cross_attention_dim=16, **unet_config), scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        folder = tmp_path_factory.mktemp(version) / "pipe"
        pipe.save_pretrained(folder, safe_serialization=True)
        built[version] = (folder, StableDiffusionPipeline.from_pretrained(folder))
    return built


def family_of(pipelines, version):
    folder, _ = pipelines[version]
    return load_family(ModelSection(family="sd", pretrained=str(folder), resolution=16, dtype="fp32"))


@pytest.mark.parametrize("version, prediction", [("sd15", "epsilon"), ("sd21", "v_prediction")])
def test_prediction_type_and_schedule_come_from_the_real_config(pipelines, version, prediction):
    family = family_of(pipelines, version)
    scheduler = pipelines[version][1].scheduler
    assert family.schedule.prediction == prediction
    torch.testing.assert_close(family.schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
    assert family.student_times(4) == pytest.approx([0.999, 0.749, 0.499, 0.249])  # DMD2's 4-step grid


def test_v_prediction_x0_is_the_ddim_schedulers(pipelines):
    """SD2.1: the adapter's x0 of a v-prediction equals DDIMScheduler's pred_original_sample for the same output."""
    family = family_of(pipelines, "sd21")
    scheduler = pipelines["sd21"][1].scheduler
    scheduler.set_timesteps(4)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for step in scheduler.timesteps.tolist():
        t = torch.full((2,), step / 1000)
        assert family.schedule.model_timestep(t).tolist() == [step, step]
        expected = scheduler.step(v, step, x).pred_original_sample
        torch.testing.assert_close(family.schedule.to_x0(v, x, t), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", ["sd15", "sd21"])
def test_teacher_sampling_with_cfg_is_the_pipelines(pipelines, version):
    """teacher_sample with the real scheduler (PNDM / DDIM), CFG 1.75 (DMD2's SD1.5 scale), unconditional "" = the
    pipeline's own call."""
    from dmdr_cli.sampling import teacher_sample

    family = family_of(pipelines, version)
    _, pipe = pipelines[version]
    prompts = ["a red cat", "two blue cubes"]
    noise = family.noise(2, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = teacher_sample(family, family.denoiser, noise, family.encode_prompts(prompts), 3,
                              Guidance(1.75, family.unconditional()))
        theirs = pipe(prompts, latents=noise, num_inference_steps=3, guidance_scale=1.75, height=16, width=16,
                      output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config,published", [("UNET_SD15", 859_520_964), ("UNET_SD21", 865_910_724)])
def test_real_size_unets_take_the_default_lora_targets(config, published):
    """The memory planner's published UNet configs (memory_trace.KNOWN) build, on the meta device, the published
    sizes (859.5M / 865.9M parameters), and the sd family's default LoRA targets exist in them."""
    from diffusers import UNet2DConditionModel

    from dmdr_cli.engines import memory_trace
    from dmdr_cli.families import SDFamily

    real = getattr(memory_trace, config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({k: v for k, v in real.items() if not k.startswith("_")})
    names = [name for name, _ in unet.named_modules()]
    for target in SDFamily.generator_lora_targets:
        assert any(n == target or n.endswith("." + target) for n in names), target
    assert sum(p.numel() for p in unet.parameters()) == published
