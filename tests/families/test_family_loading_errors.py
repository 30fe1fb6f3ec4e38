"""Loading mistakes a user can make: one ModelLoadError line that says what is wrong and how to fix it."""

import json
import shutil

import pytest
import torch
from family_helpers import load, model_section

from dmdr_cli.errors import ModelLoadError
from dmdr_cli.families import load_family
from dmdr_cli.families.loading import family_of_pipeline


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load("sd", tmp_path / "nope")
    assert "does not exist" in assert_one_line(err) and "model_index.json" in str(err.value)


def test_hub_id_without_a_cached_copy_offline():
    with pytest.raises(ModelLoadError) as err:
        load("sdxl", "dmdr-tests/not-a-real-repo")
    assert "hub" in assert_one_line(err) and "dmdr-tests/not-a-real-repo" in str(err.value)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load("sd", tmp_path)
    assert "has no model_index.json" in assert_one_line(err)


def test_component_folder_instead_of_pipeline(tiny_sd):
    with pytest.raises(ModelLoadError) as err:
        load("sd", tiny_sd / "unet")
    assert "UNet2DConditionModel folder" in assert_one_line(err) and "pipeline folder" in str(err.value)


def test_wrong_family(tiny_sd3):
    with pytest.raises(ModelLoadError) as err:
        load("sdxl", tiny_sd3)
    message = assert_one_line(err)
    assert f"{tiny_sd3} is a StableDiffusion3Pipeline folder (family sd3)" in message
    assert message.endswith("but the recipe says model.family: sdxl; set model.family: sd3")


@pytest.mark.parametrize("class_name, family", [
    ("StableDiffusionPipeline", "sd"), ("StableDiffusionXLPipeline", "sdxl"), ("StableDiffusion3Pipeline", "sd3"),
    ("StableDiffusionXLImg2ImgPipeline", "sdxl"), ("FluxPipeline", "flux"), ("KandinskyPipeline", None)])
def test_family_of_pipeline(class_name, family):
    assert family_of_pipeline(class_name) == family


def test_missing_component_folder(tiny_sd, tmp_path):
    broken = shutil.copytree(tiny_sd, tmp_path / "sd")
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelLoadError) as err:
        load("sd", broken)
    assert "lists unet but the folder unet/ is missing" in assert_one_line(err)


def test_component_not_in_model_index(tiny_sd3, tmp_path):
    broken = shutil.copytree(tiny_sd3, tmp_path / "sd3")
    index = json.loads((broken / "model_index.json").read_text())
    index["vae"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as err:
        load("sd3", broken)
    assert "has no vae" in assert_one_line(err)


def test_pretrained_pointing_at_a_file(tiny_sd):
    with pytest.raises(ModelLoadError) as err:
        load("sd", tiny_sd / "model_index.json")
    assert "model.single_file" in assert_one_line(err)


def test_single_file_missing(tiny_sd, tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_family(model_section("sd", tiny_sd, single_file=str(tmp_path / "finetune.safetensors")))
    assert "model.single_file" in assert_one_line(err) and "does not exist" in str(err.value)


def perturbed_state_dict(module: torch.nn.Module) -> dict:
    return {k: v + 0.25 for k, v in module.state_dict().items()}


@pytest.mark.parametrize("variant", ["sd", "sd3"])
def test_single_file_in_diffusers_format(folders, tmp_path, variant):
    from safetensors.torch import save_file

    base = load(variant, folders[variant], with_text_encoders=False, with_vae=False)
    weights = perturbed_state_dict(base.denoiser)
    save_file(weights, tmp_path / "finetune.safetensors")
    family = load_family(model_section(variant, folders[variant], single_file=str(tmp_path / "finetune.safetensors")),
                         with_text_encoders=False, with_vae=False)
    loaded = family.denoiser.state_dict()
    for name, value in weights.items():
        torch.testing.assert_close(loaded[name], value)
    assert str(tmp_path / "finetune.safetensors") in family.components.source


def test_single_file_of_another_model(tiny_sd, tmp_path):
    from safetensors.torch import save_file

    save_file({"some.other.weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelLoadError) as err:
        load_family(model_section("sd", tiny_sd, single_file=str(tmp_path / "other.safetensors")),
                    with_text_encoders=False, with_vae=False)
    assert "other.safetensors" in assert_one_line(err)
