"""LoRA in the kohya / ComfyUI key layout: `<prefix><module_path_with_underscores>.{lora_down,lora_up}.weight`
plus a scalar `.alpha` per module (scale = alpha / rank, as peft's lora_alpha / r).

Naming facts (diffusers' converters go the other way: kohya -> diffusers; this is the inverse):
- SDXL: kohya-ss trains SDXL on the original sgm UNet, so modules carry its names with the prefix
  `lora_unet_` (`input_blocks.4.1.transformer_blocks.0.attn1.to_q`, `input_blocks.1.0.in_layers.2`, ...).
  Resnet and top-level renames and the block numbering are those read back by diffusers'
  `_convert_unet_lora_key` and `_maybe_map_sgm_blocks_to_diffusers` (loaders/lora_conversion_utils.py);
  inside a transformer block the names are the same in both layouts.
- SD1.x / 2.x: kohya-ss trains these on the diffusers UNet, so `lora_unet_` + the diffusers module path with
  underscores (what diffusers' `_convert_unet_lora_key` and ComfyUI's key map read for SD1.5).
- SD3: diffusers has no kohya converter for SD3; ComfyUI's LoRA key map for SD3 accepts the diffusers
  module path with underscores behind `lora_transformer_` (the OneTrainer layout), which keeps
  diffusers' split q/k/v (ComfyUI applies each to its slice of the fused qkv weight).
- FLUX: kohya's `lora_unet_` + the original BFL module (`double_blocks_0_img_attn_qkv`), with fused
  modules' LoRAs fused too (export/flux_bfl.py); diffusers reads these back with its kohya FLUX converter.

The alpha written is the recipe's lora_alpha (diffusers' own kohya writer assumes alpha = rank).
"""

from __future__ import annotations

import torch

from ..errors import DmdrError

COMFYUI_FAMILIES = ("sd", "sdxl", "sd3", "flux")
DIFFUSERS_READS_KOHYA = ("sd", "sdxl", "flux")  # families whose kohya files `load_lora_weights` converts

# diffusers resnet submodule -> sgm ResBlock submodule
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# modules outside the block structure
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _has_attention(block_type: str | None) -> bool:
    return block_type is not None and "Attn" in block_type


def _per_block(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def sgm_block_names(config) -> dict[str, str]:
    """diffusers UNet block path -> sgm block path, from the UNet's config.

    input_blocks count every resnet (+ its attention) and every downsampler, after conv_in at 0;
    output_blocks hold layers_per_block + 1 resnets per level, the upsampler joining the last one at
    index 1 (no attention) or 2 (after the attention); the mid block is resnet, attention, resnet.
    """
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    layers = _per_block(config["layers_per_block"], len(down_types))
    names: dict[str, str] = {}
    n = 0
    for i, kind in enumerate(down_types):
        for j in range(layers[i]):
            n += 1
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n}.0"
            if _has_attention(kind):
                names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
        if i < len(down_types) - 1:
            n += 1
            names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"

    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid is not None:
        names["mid_block.resnets.0"] = "middle_block.0"
        if _has_attention(mid):
            names["mid_block.attentions.0"] = "middle_block.1"
        names["mid_block.resnets.1"] = f"middle_block.{2 if _has_attention(mid) else 1}"

    n = 0
    for i, (kind, per_level) in enumerate(zip(up_types, reversed(layers))):
        for j in range(per_level + 1):
            names[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n}.0"
            if _has_attention(kind):
                names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
            if j == per_level and i < len(up_types) - 1:
                names[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if _has_attention(kind) else 1}.conv"
            n += 1
    return names


def sgm_module_name(path: str, blocks: dict[str, str]) -> str | None:
    """The sgm name of a diffusers UNet module path, None where the layouts have no counterpart."""
    if path in _TOP:
        return _TOP[path]
    if path in blocks:  # samplers map as a whole
        return blocks[path]
    for prefix, target in blocks.items():
        if path.startswith(prefix + "."):
            rest = path[len(prefix) + 1:]
            if ".resnets." in prefix:
                return f"{target}.{_RESNET[rest]}" if rest in _RESNET else None
            return f"{target}.{rest}"  # transformer internals keep their names
    return None


def comfyui_lora(family: str, adapter: dict[str, torch.Tensor], alpha: float, dtype: torch.dtype,
                 denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The generator LoRA in the kohya layout ComfyUI reads for `family` (callers refuse other families first)."""
    if family == "flux":
        from .flux_bfl import kohya_flux_lora

        widths = {name.removesuffix(".base_layer"): m.out_features for name, m in denoiser.named_modules()
                  if isinstance(m, torch.nn.Linear)}  # peft wraps each target's Linear as its .base_layer
        return kohya_flux_lora(adapter, alpha, dtype, widths.__getitem__)
    return kohya_state_dict(adapter, comfyui_namer(family, denoiser.config), alpha, dtype)


def comfyui_namer(family: str, denoiser_config) -> "KeyNamer":
    """The kohya key naming ComfyUI reads for `family` (callers refuse other families first)."""
    if family == "sdxl":
        blocks = sgm_block_names(denoiser_config)
        return KeyNamer("lora_unet_", lambda path: sgm_module_name(path, blocks))
    if family == "sd3":
        return KeyNamer("lora_transformer_", lambda path: path)
    if family == "sd":
        return KeyNamer("lora_unet_", lambda path: path)
    raise ValueError(f"no ComfyUI key layout for the {family} family (covered: {', '.join(COMFYUI_FAMILIES)})")


class KeyNamer:
    """diffusers module path -> kohya module key (prefix + dotted path with underscores)."""

    def __init__(self, prefix: str, rename):
        self.prefix = prefix
        self.rename = rename

    def __call__(self, path: str) -> str | None:
        name = self.rename(path)
        return None if name is None else self.prefix + name.replace(".", "_")


def adapter_modules(adapter: dict[str, torch.Tensor]) -> list[str]:
    """Module paths of a peft LoRA state dict (`<path>.lora_A.weight` / `<path>.lora_B.weight`)."""
    modules = set()
    for key in adapter:
        path, sep, tail = key.rpartition(".lora_")
        if not sep or tail not in ("A.weight", "B.weight"):
            raise DmdrError(f"generator LoRA key {key!r} is not a plain LoRA weight (lora_A / lora_B): kohya / "
                            f"ComfyUI files carry only those")
        modules.add(path)
    return sorted(modules)


def kohya_state_dict(adapter: dict[str, torch.Tensor], namer: KeyNamer, alpha: float,
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """peft (lora_A = down, lora_B = up) -> kohya keys; alpha in fp32 so no dtype rounds the scale."""
    out: dict[str, torch.Tensor] = {}
    for path in adapter_modules(adapter):
        name = namer(path)
        if name is None:
            raise DmdrError(f"the generator LoRA wraps {path}, which has no counterpart in the original checkpoint "
                            f"layout ComfyUI uses: export it with --format lora or --format safetensors")
        out[f"{name}.lora_down.weight"] = adapter[f"{path}.lora_A.weight"].to(dtype).contiguous()
        out[f"{name}.lora_up.weight"] = adapter[f"{path}.lora_B.weight"].to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out
