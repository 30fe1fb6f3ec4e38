"""README.md: it says what the student is, and its Python block, run as written (only cuda -> cpu and the folder path
filled in), builds a pipeline that samples like `dmdr_cli.sampling.sample`, for every format of every family: SD1.5,
SDXL, SD3-Medium, SD3.5-Large (release-shaped teachers for single files, see trained_students.py) and the pixel-space
world, whose exports ship their own pipeline."""

import json
import shutil

import pytest
from trained_students import RESOLUTION, STUDENTS, assert_reproduces, call_as_the_card_says

from dmdr_cli.engines.export import run_export
from dmdr_cli.export.scheduler import student_scheduler

NO_MERGE, REFERENCE, DENOISER, MERGE = {"merge_lora": False}, {"copy_components": False}, {"denoiser_only": True}, \
    {"merge_lora": True}
CARDS = [
    ("sd-full-sde", "safetensors", {}), ("sd-lora-ode", "safetensors", NO_MERGE), ("sd-lora-ode", "lora", {}),
    ("sd-full-sde", "diffusers", {}), ("sd-lora-ode", "diffusers", REFERENCE), ("sd-full-sde", "comfyui", {}),
    ("sd-lora-ode", "single-file", {}), ("sd-full-sde", "single-file", DENOISER),
    ("sdxl-lora-sde", "safetensors", {}), ("sdxl-lora-sde", "lora", {}), ("sdxl-lora-sde", "diffusers", REFERENCE),
    ("sdxl-full-1step", "diffusers", {}), ("sdxl-ordered-lora", "comfyui", {}), ("sdxl-ordered-lora", "comfyui", MERGE),
    ("sdxl-ordered-full", "single-file", {}), ("sdxl-ordered-lora", "single-file", DENOISER),
    ("sd3-lora-ode", "safetensors", {}), ("sd3-lora-sde", "lora", {}), ("sd3-full-ode", "diffusers", {}),
    ("sd3-lora-ode", "diffusers", REFERENCE), ("sd3m-full", "comfyui", {}), ("sd3m-full", "single-file", {}),
    ("sd3m-full", "single-file", DENOISER),
    ("sd35l-lora", "safetensors", NO_MERGE), ("sd35l-lora", "lora", {}), ("sd35l-lora", "diffusers", {}),
    ("sd35l-lora", "comfyui", MERGE), ("sd35l-lora", "single-file", {}), ("sd35l-lora", "single-file", DENOISER),
    ("world-full-sde", "diffusers", {}), ("world-full-sde", "diffusers", REFERENCE),
    ("world-full-sde", "safetensors", {}), ("world-lora-ode", "lora", {}), ("world-lora-ode", "safetensors", NO_MERGE),
    ("flux-lora-ode", "lora", {}), ("flux-full-ode", "safetensors", {}), ("flux-lora-sde", "diffusers", {}),
    ("sd-lora-sde", "comfyui", {}),
]


def run_card(out) -> dict:
    """Execute the card's Python block with the CPU for the GPU and fp32 for half precision; its namespace."""
    card = (out / "README.md").read_text()
    code = card.split("```python\n")[1].split("\n```")[0]
    for gpu, cpu in [('"cuda"', '"cpu"'), ("torch.float16", "torch.float32"), ("torch.bfloat16", "torch.float32"),
                     ("path/to/this/folder", str(out))]:
        code = code.replace(gpu, cpu)
    namespace = {}
    exec(code, namespace)
    return namespace


@pytest.mark.parametrize("name, fmt, options", CARDS, ids=[f"{n}-{f}-{'-'.join(o) or 'default'}" for n, f, o in CARDS])
def test_the_cards_code_samples_like_dmdr(trained, export, name, fmt, options):
    student = trained(name)
    out = export(student, fmt, **options)
    namespace = run_card(out)
    assert namespace["image"].size == (RESOLUTION, RESOLUTION)
    spec = student_scheduler(student.family, student.times, student.sampler)
    card = (out / "README.md").read_text()
    assert_reproduces(call_as_the_card_says(namespace["pipe"], spec, student, card), student.reference_sample())


def test_every_format_of_every_family_has_a_card_test():
    from dmdr_cli.export.formats import FORMATS

    covered = {(STUDENTS[name][1].split("-")[0], fmt) for name, fmt, _ in CARDS}
    # the world's comfyui and single-file are refused (test_export_cli.py); diffusers reads FLUX's BFL layouts
    # (comfyui, single-file) only at FLUX's real widths, so those are checked there (test_export_flux_layout.py)
    elsewhere = {("world", "comfyui"), ("world", "single-file"), ("flux", "comfyui"), ("flux", "single-file")}
    for teacher in ("sd", "sdxl", "sd3", "sd35", "world", "flux"):
        for fmt in FORMATS:
            if (teacher, fmt) not in elsewhere:
                assert (teacher, fmt) in covered, (teacher, fmt)


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
