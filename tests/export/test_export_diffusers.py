"""`--format diffusers`: the exported pipeline, called as its model card says, reproduces `dmdr_cli.sampling.sample`.

Same initial noise (`latents=`) and the same fresh step noise: LCMScheduler draws it from the pipeline's
`generator`, FlowMatchEuler's stochastic step (SD3 pipeline) from torch's global RNG; our sampler draws it
from a generator seeded alike. Tolerance: max |pipeline - ours| <= 1e-5 x max(1, max |ours|) (see
trained_students.assert_reproduces for why the bound scales).
"""

import json

import pytest
import torch
from trained_students import assert_reproduces, call_as_the_card_says

from dmdr_cli.export.scheduler import student_scheduler


@pytest.mark.parametrize("name, scheduler, step_noise", [
    ("sd-full-sde", "LCMScheduler", "generator"),
    ("sd-lora-ode", "EulerDiscreteScheduler", "none"),
    ("sdxl-lora-sde", "LCMScheduler", "generator"),
    ("sdxl-full-1step", "LCMScheduler", "none"),
    ("sd3-lora-ode", "FlowMatchEulerDiscreteScheduler", "none"),
    ("sd3-lora-sde", "FlowMatchEulerDiscreteScheduler", "global"),
    ("flux-lora-ode", "FlowMatchEulerDiscreteScheduler", "none"),
    ("flux-lora-sde", "FlowMatchEulerDiscreteScheduler", "global"),
])
def test_pipeline_folder_reproduces_our_sampler(trained, export, name, scheduler, step_noise):
    from diffusers import DiffusionPipeline

    student = trained(name)
    out = export(student, "diffusers")
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", scheduler]
    assert (out / "vae").is_dir() and (out / "text_encoder").is_dir()  # copied from the teacher

    pipe = DiffusionPipeline.from_pretrained(out)
    spec = student_scheduler(student.family, student.times, student.sampler)
    assert spec.step_noise == step_noise
    assert_reproduces(call_as_the_card_says(pipe, spec, student, (out / "README.md").read_text()),
                      student.reference_sample())


def test_the_1step_sdxl_student_is_told_timestep_399(trained, export):
    """LCMScheduler's own spacing can never give 399 at one step: the card passes timesteps=[399]."""
    out = export(trained("sdxl-full-1step"), "diffusers")
    card = (out / "README.md").read_text()
    assert "timesteps=[399]" in card
    assert "manual_seed" not in card  # one step draws no step noise


def test_4step_lcm_spacing_is_dmd2s_grid(trained, export):
    """With original_inference_steps = 1000, LCM's default 4-step spacing is [999, 749, 499, 249] too."""
    from diffusers import LCMScheduler

    out = export(trained("sdxl-lora-sde"), "diffusers")
    scheduler = LCMScheduler.from_pretrained(out, subfolder="scheduler")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]


def test_reference_components_loads_with_the_cards_call(trained, export):
    """--reference-components writes only the denoiser and scheduler; the card's from_pretrained(teacher, unet=,
    scheduler=) call assembles the pipeline."""
    from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel

    student = trained("sdxl-lora-sde")
    out = export(student, "diffusers", copy_components=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "scheduler", "unet"]
    card = (out / "README.md").read_text()
    teacher = student.recipe.model.pretrained
    assert f'pipe = DiffusionPipeline.from_pretrained("{teacher}", torch_dtype=torch.float32, unet=unet, ' \
           f"scheduler=scheduler)" in card
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    pipe = DiffusionPipeline.from_pretrained(teacher, unet=unet,
                                             scheduler=LCMScheduler.from_pretrained(out, subfolder="scheduler"))
    spec = student_scheduler(student.family, student.times, student.sampler)
    assert_reproduces(call_as_the_card_says(pipe, spec, student, card), student.reference_sample())
