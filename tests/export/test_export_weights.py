"""`--format safetensors` and `--format lora`: the weights load back into the teacher and sample like the in-memory
student (its LoRA unmerged, so the merge itself is checked), and the files say what they are.

Tolerances: weights compared at 1e-6 (fp32 merge order); samples at 1e-5 x max(1, max |sample|), the bound of
test_export_diffusers.py.
"""

import json

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from trained_students import STEP, assert_reproduces

from dmdr_cli.families import load_family
from dmdr_cli.recipe import validate


def metadata(file) -> dict:
    with safe_open(str(file), "pt") as f:
        return f.metadata()


def fresh_teacher(student):
    """The teacher's denoiser loaded anew, nothing applied."""
    return load_family(student.recipe.model, with_text_encoders=False, with_vae=False).denoiser.eval()


@pytest.mark.parametrize("name", ["sd-full-sde", "sdxl-lora-sde", "sd3-lora-ode", "sd3-full-ode", "flux-full-ode"])
def test_safetensors_holds_the_student_in_native_keys(trained, export, name):
    student = trained(name)
    out = export(student, "safetensors")
    sub = student.family.denoiser_subfolder
    assert sorted(p.name for p in out.iterdir()) == ["README.md", f"{sub}.safetensors"]
    weights = load_file(out / f"{sub}.safetensors")
    teacher = fresh_teacher(student)
    assert set(weights) == set(teacher.state_dict())  # diffusers' own layout: no peft base_layer / lora keys
    teacher.load_state_dict(weights)
    assert_reproduces(student.reference_sample(teacher), student.reference_sample())

    meta = metadata(out / f"{sub}.safetensors")
    assert validate(yaml.safe_load(meta["dmdr.recipe"])) == student.recipe
    assert meta["dmdr.step"] == str(STEP) and meta["dmdr.version"] == "0.1.0"
    assert json.loads(meta["dmdr.student_times"]) == student.times
    assert meta["dmdr.sampler"] == student.sampler
    assert meta["dmdr.generator"] == ("full" if "full" in name else "lora-merged")


def test_dtype_applies_to_the_written_weights(trained, export):
    out = export(trained("sd-full-sde"), "safetensors", dtype="bf16")
    assert {v.dtype for v in load_file(out / "unet.safetensors").values()} == {torch.bfloat16}


def _loaded_lora_denoiser(student, path, **kwargs):
    """The teacher pipeline after `load_lora_weights(path)`: diffusers' own reader, as the model card says."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(student.recipe.model.pretrained)
    pipe.load_lora_weights(str(path), **kwargs)
    return getattr(pipe, student.family.denoiser_subfolder).eval()


@pytest.mark.parametrize("name", ["sd-lora-ode", "sdxl-lora-sde", "sd3-lora-ode", "flux-lora-ode"])
def test_lora_loads_with_load_lora_weights(trained, export, name):
    student = trained(name)
    out = export(student, "lora")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "pytorch_lora_weights.safetensors"]
    file = out / "pytorch_lora_weights.safetensors"
    prefix = student.family.denoiser_subfolder + "."
    assert all(k.startswith(prefix) and (".lora_A." in k or ".lora_B." in k) for k in load_file(file))

    meta = metadata(file)
    adapter = json.loads(meta["lora_adapter_metadata"])  # what diffusers builds the LoraConfig from
    assert adapter[prefix + "r"] == 4 and adapter[prefix + "lora_alpha"] == 12.0  # alpha != rank survives
    assert meta["dmdr.lora_alpha"] == "12.0" and meta["dmdr.step"] == str(STEP)

    loaded = _loaded_lora_denoiser(student, out)
    assert_reproduces(student.reference_sample(loaded), student.reference_sample())


def test_unmerged_safetensors_is_a_diffusers_lora(trained, export):
    student = trained("sdxl-lora-sde")
    out = export(student, "safetensors", merge_lora=False)
    file = out / "unet_lora.safetensors"
    assert metadata(file)["dmdr.generator"] == "lora"
    loaded = _loaded_lora_denoiser(student, out, weight_name=file.name)
    assert_reproduces(student.reference_sample(loaded), student.reference_sample())


def test_merged_weights_equal_the_lora_formula(trained, export):
    """W + (alpha / rank) B A per wrapped module: the merged export against the adapter file, by hand."""
    student = trained("sd3-lora-ode")
    merged = load_file(export(student, "safetensors") / "transformer.safetensors")
    adapter = load_file(export(student, "lora") / "pytorch_lora_weights.safetensors")
    base = fresh_teacher(student).state_dict()
    module = "transformer_blocks.0.attn.add_k_proj"
    delta = adapter[f"transformer.{module}.lora_B.weight"] @ adapter[f"transformer.{module}.lora_A.weight"]
    torch.testing.assert_close(merged[f"{module}.weight"], base[f"{module}.weight"] + 12.0 / 4 * delta,
                               atol=1e-6, rtol=0)
    assert torch.equal(merged["pos_embed.proj.weight"], base["pos_embed.proj.weight"])  # untouched by the LoRA
