"""FLUX.1 in the original Black Forest Labs layout (export/flux_bfl.py), checked against diffusers' own readers.

diffusers' BFL reader (`convert_flux_transformer_checkpoint_to_diffusers`, what `from_single_file` runs) and its
kohya FLUX LoRA reader (`_convert_kohya_flux_lora_to_diffusers`, what `load_lora_weights` runs) both assume FLUX.1's
real widths (3072 hidden, 12288 MLP), so they are fed a FluxTransformer2DModel of the real width with one double and
one single block: its state dict as int8 row patterns (a swapped part or half changes values), its LoRA as rank-2
tensors. The tiny exported student checks the rest: the ComfyUI file, applied to the BFL weights the way ComfyUI
applies a LoRA (W += alpha / rank up @ down), gives the BFL weights of the merged export.
"""

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dmdr_cli.export.flux_bfl import bfl_module, kohya_flux_lora, to_bfl
from dmdr_cli.families.flux import FLUX_GENERATOR_TARGETS

WIDE = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
            axes_dims_rope=[16, 56, 56])
# shapes in black-forest-labs/FLUX.1-dev's flux1-dev.safetensors
BFL_FACTS = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "double_blocks.0.txt_mlp.0.weight": (12288, 3072),
             "double_blocks.0.img_attn.norm.query_norm.scale": (128,), "single_blocks.0.linear1.weight": (21504, 3072),
             "single_blocks.0.linear2.weight": (3072, 15360), "single_blocks.0.modulation.lin.weight": (9216, 3072),
             "final_layer.adaLN_modulation.1.weight": (6144, 3072), "guidance_in.in_layer.weight": (3072, 256),
             "time_in.out_layer.bias": (3072,), "vector_in.in_layer.weight": (3072, 16), "img_in.weight": (3072, 64)}


@pytest.fixture(scope="module")
def wide():
    """The real-width two-block FluxTransformer2DModel on the meta device: module widths and parameter shapes."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**WIDE)
    widths = {name: m.out_features for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return widths, {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_bfl_layout_is_what_diffusers_reads_back(wide):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    _, shapes = wide
    state = {}
    for i, (key, shape) in enumerate(shapes.items()):
        rows = torch.arange(shape[0], dtype=torch.int16).view(-1, *[1] * (len(shape) - 1))
        state[key] = (rows * 7 + i).to(torch.int8).expand(shape).contiguous()
    bfl = to_bfl(state)
    for key, shape in BFL_FACTS.items():
        assert tuple(bfl[key].shape) == shape, key
    left = dict(bfl)
    back = convert_flux_transformer_checkpoint_to_diffusers(left)
    assert left == {}, f"keys diffusers does not read: {sorted(left)[:3]}"
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_kohya_keys_map_back_through_diffusers_kohya_converter(wide):
    """Every module the LoRA wraps (the default targets plus modulations, the single blocks' linear2 and the final
    layer) comes back under its own name with down x (alpha / rank) and up: 0 unmapped keys."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    widths, shapes = wide
    extra = ["norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear", "proj_out"]
    paths = sorted(p for p in widths if any(p == t or p.endswith("." + t) for t in FLUX_GENERATOR_TARGETS + extra))
    assert {bfl_module(p)[0] for p in paths} >= {"single_blocks.0.linear1", "double_blocks.0.img_attn.qkv",
                                                 "final_layer.adaLN_modulation.1", "single_blocks.0.linear2"}
    rank, alpha = 2, 3.0
    gen = torch.Generator().manual_seed(0)
    adapter = {}
    for path in paths:
        adapter[f"{path}.lora_A.weight"] = torch.randn(rank, shapes[f"{path}.weight"][1], generator=gen)
        adapter[f"{path}.lora_B.weight"] = torch.randn(widths[path], rank, generator=gen)
    kohya = kohya_flux_lora(adapter, alpha, torch.float32, widths.__getitem__)
    unread = []  # diffusers logs the keys it leaves unconverted ("Unsupported keys for ai-toolkit")
    handler = logging.Handler()
    handler.emit = lambda record: unread.append(record.getMessage())
    converter_log = logging.getLogger("diffusers.loaders.lora_conversion_utils")
    converter_log.addHandler(handler)
    try:
        converted = _convert_kohya_flux_lora_to_diffusers(dict(kohya))
    finally:
        converter_log.removeHandler(handler)
    assert not [m for m in unread if "nsupported" in m or "ncompatible" in m], unread
    converted = {k.removeprefix("transformer."): v for k, v in converted.items()}
    assert set(converted) == set(adapter)  # every module under its own name, nothing else
    for path in paths:
        down, up = converted[f"{path}.lora_A.weight"], converted[f"{path}.lora_B.weight"]
        # peft applies up @ down at scale 1 (no alpha in the converted dict): compare the factors, not the product
        torch.testing.assert_close(up @ down[:, :4], alpha / rank * adapter[f"{path}.lora_B.weight"]
                                   @ adapter[f"{path}.lora_A.weight"][:, :4], rtol=1e-5, atol=1e-5, msg=path)


def test_comfyui_file_applied_to_the_bfl_weights_gives_the_merged_export(trained, export):
    student = trained("flux-lora-ode")
    file = export(student, "comfyui") / "comfyui_lora.safetensors"
    merged = to_bfl(load_file(export(student, "safetensors") / "transformer.safetensors"))
    from dmdr_cli.families import load_family

    weights = to_bfl(load_family(student.recipe.model, with_text_encoders=False, with_vae=False).denoiser.state_dict())
    modules: dict[str, dict] = {}
    for key, value in load_file(file).items():
        module, _, part = key.partition(".")
        modules.setdefault(module, {})[part] = value
    wrapped = {bfl_module(p.rsplit(".lora_", 1)[0])[0] for p in student.family.denoiser.state_dict() if ".lora_A." in p}
    assert set(modules) == {"lora_unet_" + m.replace(".", "_") for m in wrapped}
    assert "lora_unet_single_blocks_0_linear1" in modules and "lora_unet_double_blocks_0_img_attn_qkv" in modules
    qkv = modules["lora_unet_double_blocks_0_img_attn_qkv"]
    assert qkv["lora_down.weight"].shape[0] == 3 * 4 and qkv["alpha"].item() == 3 * 12.0  # 3 parts of rank 4
    for module, parts in modules.items():
        name = module.removeprefix("lora_unet_")
        target = next(k for k in weights if k.replace(".", "_") == f"{name}_weight")
        scale = parts["alpha"].item() / parts["lora_down.weight"].shape[0]
        weights[target] = weights[target] + scale * parts["lora_up.weight"] @ parts["lora_down.weight"]
    for key, value in merged.items():
        torch.testing.assert_close(weights[key], value, atol=1e-6, rtol=0, msg=key)
    with safe_open(str(file), "pt") as f:
        assert f.metadata()["ss_network_alpha"] == "12.0"



def test_single_file_of_a_flux_student_is_its_transformer_in_the_bfl_layout(trained, export):
    """FLUX.1 ships its transformer alone (flux1-dev.safetensors): --format single-file writes the student's in that
    layout, merged for a LoRA, the weights of --format safetensors renamed and nothing else."""
    for name in ("flux-full-ode", "flux-lora-ode"):
        student = trained(name)
        out = export(student, "single-file")
        files = [p.name for p in out.glob("*.safetensors")]
        assert files == ["flux_" + ("2" if name == "flux-full-ode" else "4") + "step_dmdr_transformer.safetensors"]
        written = load_file(out / files[0])
        expected = to_bfl(load_file(export(student, "safetensors", **({} if name == "flux-full-ode" else {"merge_lora": True}))
                                    / "transformer.safetensors"))
        assert written.keys() == expected.keys() and "double_blocks.0.img_attn.qkv.weight" in written
        assert all(torch.equal(written[k], expected[k]) for k in written), name
