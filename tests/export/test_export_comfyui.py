"""`--format comfyui`: kohya key names checked against the original-checkpoint layout derived here from the model
config (not through the exporter's own mapping), alpha = the recipe's lora_alpha (12) not the rank (4), and the
file applied by an independent reader gives the merged weights of `--format safetensors` (atol 1e-6, fp32).
"""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dmdr_cli.export.kohya import comfyui_namer

RANK, ALPHA = 4, 12.0

# SDXL base's UNet config (block structure only) and names from its original sgm checkpoint.
SDXL_CONFIG = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
               "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
               "layers_per_block": 2, "mid_block_type": "UNetMidBlock2DCrossAttn"}
SDXL_FACTS = {
    "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
    "down_blocks.0.resnets.1.time_emb_proj": "input_blocks.2.0.emb_layers.1",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
    "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
    "down_blocks.1.attentions.0.proj_in": "input_blocks.4.1.proj_in",
    "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k": "input_blocks.5.1.transformer_blocks.1.attn2.to_k",
    "down_blocks.1.downsamplers.0.conv": "input_blocks.6.0.op",
    "down_blocks.2.attentions.0.transformer_blocks.9.ff.net.0.proj":
        "input_blocks.7.1.transformer_blocks.9.ff.net.0.proj",
    "down_blocks.2.resnets.1.conv2": "input_blocks.8.0.out_layers.3",
    "mid_block.resnets.0.conv1": "middle_block.0.in_layers.2",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0": "middle_block.1.transformer_blocks.0.attn1.to_out.0",
    "mid_block.resnets.1.conv2": "middle_block.2.out_layers.3",
    "up_blocks.0.resnets.0.conv_shortcut": "output_blocks.0.0.skip_connection",
    "up_blocks.0.attentions.2.proj_out": "output_blocks.2.1.proj_out",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
    "up_blocks.1.attentions.0.transformer_blocks.1.attn1.to_v": "output_blocks.3.1.transformer_blocks.1.attn1.to_v",
    "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
    "up_blocks.2.resnets.2.conv1": "output_blocks.8.0.in_layers.2",
    "conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
# resnet submodules, diffusers -> sgm (the table diffusers' _convert_unet_lora_key reads back)
RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
          "conv_shortcut": "skip_connection"}


def kohya_modules(file) -> dict[str, dict[str, torch.Tensor]]:
    """{module key: {"lora_down.weight": ..., "lora_up.weight": ..., "alpha": ...}}."""
    modules: dict[str, dict] = {}
    for key, value in load_file(file).items():
        module, _, part = key.partition(".")
        modules.setdefault(module, {})[part] = value
    return modules


def test_sdxl_names_are_the_sgm_checkpoint_names():
    namer = comfyui_namer("sdxl", SDXL_CONFIG)
    assert {path: namer(path) for path in SDXL_FACTS} == \
           {path: "lora_unet_" + sgm.replace(".", "_") for path, sgm in SDXL_FACTS.items()}


def expected_sgm_key(path: str, config) -> str:
    """The kohya key of a diffusers UNet module path, from the closed-form block numbering of a UNet with a uniform
    layers_per_block L: input block 1 + i (L + 1) + j (a level's downsampler at j = L), output block i (L + 1) + j,
    the up-sampler joining output block i (L + 1) + L at index 1 + (level has attention); mid: resnet, attention,
    resnet. Resnet submodules are renamed, transformer internals keep their names."""
    L = config["layers_per_block"]
    parts = path.split(".")
    if parts[0] == "mid_block":
        kind, rest = parts[1], ".".join(parts[3:])
        block = "middle_block.{}".format({"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])])
    else:
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":
            block = f"input_blocks.{1 + level * (L + 1) + L}.0.op"
        elif kind == "upsamplers":
            block = f"output_blocks.{level * (L + 1) + L}.{1 + ('Attn' in config['up_block_types'][level])}.conv"
        elif parts[0] == "down_blocks":
            block = f"input_blocks.{1 + level * (L + 1) + j}.{0 if kind == 'resnets' else 1}"
        else:
            block = f"output_blocks.{level * (L + 1) + j}.{0 if kind == 'resnets' else 1}"
    if kind == "resnets":
        rest = RESNET[rest]
    name = f"{block}.{rest}" if kind in ("resnets", "attentions") else block
    return "lora_unet_" + name.replace(".", "_")


@pytest.mark.parametrize("name", ["sdxl-lora-sde", "sdxl-ordered-lora"])
def test_sdxl_keys_match_the_config_derived_sgm_names(trained, export, name):
    student = trained(name)
    file = export(student, "comfyui") / "comfyui_lora.safetensors"
    modules = kohya_modules(file)
    config = student.student.config
    wrapped = sorted({k.rsplit(".lora_", 1)[0] for k in load_file(student.run / "checkpoints" / "step-000120" /
                                                                      "generator.safetensors")})
    assert set(modules) == {expected_sgm_key(path, config) for path in wrapped}
    assert any(".transformer_blocks." not in p and "attentions" in p for p in wrapped)  # proj_in / proj_out covered
    for parts in modules.values():
        assert set(parts) == {"lora_down.weight", "lora_up.weight", "alpha"}
        assert parts["alpha"].item() == ALPHA and parts["lora_down.weight"].shape[0] == RANK
    with safe_open(str(file), "pt") as f:
        assert f.metadata()["ss_network_alpha"] == "12.0" and f.metadata()["ss_network_dim"] == "4"


@pytest.mark.parametrize("name", ["sdxl-ordered-lora", "sd-lora-sde"])
def test_unet_file_loads_in_diffusers_to_the_merged_weights(trained, export, name):
    """diffusers' kohya reader (load_lora_weights accepts sgm-named kohya files for SDXL, diffusers-named ones for
    SD1.x), fused, equals our merged export. On SDXL's own block order: diffusers' reader places every up-sampler
    behind an attention (index 2), which is where SDXL has them; ComfyUI's naming, ours, also covers up-samplers of
    plain up blocks (index 1)."""
    from diffusers import DiffusionPipeline

    student = trained(name)
    file = export(student, "comfyui") / "comfyui_lora.safetensors"
    merged = load_file(export(student, "safetensors") / "unet.safetensors")
    pipe = DiffusionPipeline.from_pretrained(student.recipe.model.pretrained)
    pipe.load_lora_weights(str(file))
    pipe.unet.fuse_lora()
    pipe.unet.unload_lora()
    loaded = pipe.unet.state_dict()
    assert set(loaded) == set(merged)
    for key, value in merged.items():
        torch.testing.assert_close(loaded[key], value, atol=1e-6, rtol=0, msg=key)


def test_sd3_file_applied_by_hand_gives_the_merged_weights(trained, export):
    """SD3 keys: `lora_transformer_` + the diffusers module path with underscores, for exactly the Linear modules the
    MMDiT targets name; applied as ComfyUI applies it (W += alpha / rank * up @ down) -> the merged export."""
    student = trained("sd3-lora-ode")
    file = export(student, "comfyui") / "comfyui_lora.safetensors"
    merged = load_file(export(student, "safetensors") / "transformer.safetensors")
    from dmdr_cli.families import load_family

    teacher = load_family(student.recipe.model, with_text_encoders=False, with_vae=False).denoiser
    targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    linear = {name: m for name, m in teacher.named_modules()
              if isinstance(m, torch.nn.Linear) and name.endswith(targets)}
    by_key = {"lora_transformer_" + name.replace(".", "_"): name for name in linear}
    modules = kohya_modules(file)
    assert set(modules) == set(by_key)

    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    for key, parts in modules.items():
        assert parts["alpha"].item() == ALPHA
        scale = parts["alpha"].item() / parts["lora_down.weight"].shape[0]
        weights[by_key[key] + ".weight"] += scale * parts["lora_up.weight"] @ parts["lora_down.weight"]
    for key, value in merged.items():
        torch.testing.assert_close(weights[key], value, atol=1e-6, rtol=0, msg=key)
