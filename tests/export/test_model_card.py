"""README.md: it says what the student is, and its Python block, run as written (cuda -> cpu, the folder path
filled in), builds a pipeline that samples like `dmdr_cli.sampling.sample`, for every kind of export."""

import json
import shutil

import pytest
from trained_students import RESOLUTION, assert_reproduces, call_as_the_card_says

from dmdr_cli.engines.export import run_export
from dmdr_cli.export.scheduler import student_scheduler


@pytest.mark.parametrize("name, fmt, options", [
    ("sd-full-sde", "safetensors", {}),
    ("sd-lora-ode", "safetensors", {"merge_lora": False}),
    ("sd3-lora-sde", "lora", {}),
    ("sdxl-lora-sde", "diffusers", {"copy_components": False}),
    ("sdxl-ordered-lora", "comfyui", {}),
    ("flux-lora-ode", "lora", {}),
    ("flux-full-ode", "safetensors", {}),
])
def test_the_cards_code_samples_like_dmdr(trained, export, name, fmt, options):
    student = trained(name)
    out = export(student, fmt, **options)
    card = (out / "README.md").read_text()
    code = card.split("```python\n")[1].split("\n```")[0]
    namespace = {}
    exec(code.replace("path/to/this/folder", str(out)).replace('"cuda"', '"cpu"'), namespace)
    assert namespace["image"].size == (RESOLUTION, RESOLUTION)
    spec = student_scheduler(student.family, student.times, student.sampler)
    assert_reproduces(call_as_the_card_says(namespace["pipe"], spec, student, card), student.reference_sample())


def test_sd3_comfyui_card_points_diffusers_users_to_the_lora_format(trained, export):
    card = (export(trained("sd3-lora-ode"), "comfyui") / "README.md").read_text()
    assert "```python" not in card and "export with `--format lora`" in card
    assert "lora_transformer_" not in card and "LoraLoaderModelOnly" in card


def test_model_card_describes_the_student(trained, tmp_path):
    student = trained("sdxl-lora-sde")
    run = shutil.copytree(student.run, tmp_path / "run")  # a copy: the session's run stays as it was
    (run / "eval").mkdir()
    (run / "eval" / "geneval.json").write_text(json.dumps({"overall": 0.56, "tasks": {"counting": 0.5},
                                                          "note": "not a number"}))
    card = (run_export(run, fmt="comfyui", out=tmp_path / "out") / "README.md").read_text()
    for fact in [f"`{student.recipe.model.pretrained}`", "generator step 120", "| steps | 4,",
                 "0.999, 0.749, 0.499, 0.249", "[999, 749, 499, 249]", "sde: predict x0",
                 "LoRA rank 4, alpha 12", "| geneval | overall | 0.56 |", "| geneval | tasks.counting | 0.5 |",
                 'pipe.load_lora_weights("path/to/this/folder", weight_name="comfyui_lora.safetensors")',
                 "LoraLoaderModelOnly", "sampler `lcm`", "lora_alpha: 12.0"]:
        assert fact in card, fact
    assert "note" not in card.split("## Evaluation")[1].split("## diffusers")[0]


def test_a_flux_dev_card_gives_the_students_guidance_value(trained, export):
    """The student was told 2.5 through its guidance embedding: the card's call and ComfyUI notes say so."""
    card = (export(trained("flux-lora-ode"), "comfyui") / "README.md").read_text()
    assert "guidance_scale=2.5, max_sequence_length=8" in card and "| guidance embedding | told 2.5" in card
    assert "*FluxGuidance* node at 2.5" in card and 'weight_name="comfyui_lora.safetensors"' in card
