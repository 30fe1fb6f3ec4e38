"""`--format single-file` (and `comfyui` of full or merged weights): the original checkpoint layout, read back by
diffusers' own single-file loader with `config=` the base model's folder (offline). Every weight of the loaded
pipeline equals the export's: the denoiser the `--format safetensors` export of the same student (diffusers' keys,
an independent writer), the other components the base model's own (exact: the layouts only rename, fuse q / k / v
and transpose). Sampling like `dmdr sample` is checked by executing the model cards (test_model_card.py).

The SDXL / SD3 teachers are the release-shaped variants (tests/export/trained_students.py): SDXL's encoders differ
in width, SD3's CLIP-L projection is the identity, SD3.5-Large has RMS qk norm.
"""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dmdr_cli.errors import DmdrError

# student -> (pipeline class, single file, denoiser file)
CHECKPOINTS = {
    "sd-full-sde": ("StableDiffusionPipeline", "sd_4step_dmdr.safetensors", "sd_4step_dmdr_unet.safetensors"),
    "sdxl-ordered-full": ("StableDiffusionXLPipeline", "sdxl_4step_dmdr.safetensors",
                          "sdxl_4step_dmdr_unet.safetensors"),
    "sdxl-ordered-lora": ("StableDiffusionXLPipeline", "sdxl_4step_dmdr.safetensors",
                          "sdxl_4step_dmdr_unet.safetensors"),
    "sd3m-full": ("StableDiffusion3Pipeline", "sd3_4step_dmdr.safetensors", "sd3_4step_dmdr_transformer.safetensors"),
    "sd35l-lora": ("StableDiffusion3Pipeline", "sd3_4step_dmdr.safetensors",
                   "sd3_4step_dmdr_transformer.safetensors"),
}


def assert_same_weights(module, expected: dict, what: str):
    loaded = module.state_dict()
    assert not [n for n, p in module.named_parameters() if p.is_meta], f"{what}: weights left on the meta device"
    assert set(loaded) == set(expected), what
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{what}: {key}"


def student_weights(student, export):
    """The student's denoiser as `--format safetensors` writes it (a LoRA merged), diffusers keys."""
    sub = student.family.denoiser_subfolder
    return load_file(export(student, "safetensors") / f"{sub}.safetensors")


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_from_single_file_loads_the_exports_weights(trained, export, name):
    import diffusers

    student = trained(name)
    pipeline, file, _ = CHECKPOINTS[name]
    out = export(student, "single-file")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", file]
    teacher = student.recipe.model.pretrained
    pipe = getattr(diffusers, pipeline).from_single_file(str(out / file), config=teacher)
    base = diffusers.DiffusionPipeline.from_pretrained(teacher)
    sub = student.family.denoiser_subfolder
    for component, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            expected = student_weights(student, export) if component == sub else base.components[component].state_dict()
            assert_same_weights(module, expected, component)
    with safe_open(str(out / file), "pt") as f:
        assert f.metadata()["dmdr.generator"] == ("full" if "full" in name else "lora-merged")


@pytest.mark.parametrize("name", ["sdxl-ordered-lora", "sd35l-lora"])
def test_denoiser_only_loads_as_the_denoiser(trained, export, name):
    import diffusers

    student = trained(name)
    _, _, file = CHECKPOINTS[name]
    out = export(student, "single-file", denoiser_only=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", file]
    assert all(k.startswith("model.diffusion_model.") for k in load_file(out / file))
    sub = student.family.denoiser_subfolder
    cls = getattr(diffusers, type(student.student).__name__)
    net = cls.from_single_file(str(out / file), config=student.recipe.model.pretrained, subfolder=sub)
    assert_same_weights(net, student_weights(student, export), sub)


def test_sdxl_keys_are_the_original_layout(trained, export):
    """Names from SDXL base's own sd_xl_base_1.0.safetensors (block numbering for this UNet's two levels)."""
    keys = set(load_file(export(trained("sdxl-ordered-full"), "single-file") / "sdxl_4step_dmdr.safetensors"))
    for key in ["model.diffusion_model.input_blocks.0.0.weight",
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                "model.diffusion_model.input_blocks.2.0.op.weight", "model.diffusion_model.label_emb.0.0.weight",
                "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.output_blocks.1.2.conv.weight",
                "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
                "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.positional_embedding",
                "first_stage_model.encoder.down.0.block.0.norm1.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.quant_conv.weight"]:
        assert key in keys, key


def test_comfyui_of_full_or_merged_weights_is_the_single_file_checkpoint(trained, export):
    student = trained("sdxl-ordered-lora")
    single = load_file(export(student, "single-file") / "sdxl_4step_dmdr.safetensors")
    comfy = load_file(export(student, "comfyui", merge_lora=True) / "sdxl_4step_dmdr.safetensors")
    assert set(comfy) == set(single) and all(torch.equal(comfy[k], v) for k, v in single.items())
    full = export(trained("sd-full-sde"), "comfyui")
    assert sorted(p.name for p in full.iterdir()) == ["README.md", "sd_4step_dmdr.safetensors"]


@pytest.mark.parametrize("dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_dtype_applies_to_every_tensor(trained, export, dtype, torch_dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    student = trained("sd-full-sde")
    file = export(student, "single-file", dtype=dtype) / "sd_4step_dmdr.safetensors"
    assert {v.dtype for v in load_file(file).values()} == {torch_dtype}
    teacher = student.recipe.model.pretrained
    unet = UNet2DConditionModel.from_single_file(str(file), config=teacher, subfolder="unet", torch_dtype=torch_dtype)
    assert_same_weights(unet, {k: v.to(torch_dtype) for k, v in student_weights(student, export).items()}, "unet")
    vae = AutoencoderKL.from_single_file(str(file), config=teacher, subfolder="vae", torch_dtype=torch_dtype)
    fresh = AutoencoderKL.from_pretrained(teacher, subfolder="vae")
    assert_same_weights(vae, {k: v.to(torch_dtype) for k, v in fresh.state_dict().items()}, "vae")


def test_sd3_mmdit_with_qk_norm_and_dual_attention_reads_back(tmp_path):
    """SD3.5-Medium's blocks (attn2 in the first, RMS qk norm everywhere) through diffusers' own SD3 reader: the
    layout covers every weight of the family's variants, not only those of the tiny pipelines."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from dmdr_cli.export.original_keys import sd3_mmdit

    torch.manual_seed(0)
    net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=16,
                                qk_norm="rms_norm", dual_attention_layers=(0,))
    state = net.state_dict()
    original = sd3_mmdit(state, dict(net.config))
    assert "model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight" in original
    assert "model.diffusion_model.joint_blocks.2.context_block.attn.ln_k.weight" in original
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(original))
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())


def test_layout_refuses_weights_it_has_no_place_for():
    from dmdr_cli.export.original_keys import ldm_vae

    config = {"up_block_types": ["UpDecoderBlock2D"] * 2}
    with pytest.raises(DmdrError, match="1 weights the single-file layout has no place for .e.g. encoder.extra.weight"):
        ldm_vae({"encoder.conv_in.weight": torch.zeros(1), "encoder.extra.weight": torch.zeros(1)}, config)


def test_sd3_clip_l_projection_must_be_the_identity(trained, tmp_path):
    """The tiny SD3 fixture's CLIP-L has a random projection; SD3 single-file readers would replace it by the
    identity, so the checkpoint would not sample like the pipeline: refused, nothing written."""
    from rich.console import Console

    from dmdr_cli.engines.export import run_export

    with pytest.raises(DmdrError, match="CLIP-L text projection is not the identity"):
        run_export(trained("sd3-full-ode").run, fmt="single-file", out=tmp_path / "out", console=Console(quiet=True))
    assert list(tmp_path.iterdir()) == []
