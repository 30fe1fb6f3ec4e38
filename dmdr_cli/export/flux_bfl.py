"""FluxTransformer2DModel (diffusers) -> the original Black Forest Labs layout, for whole weights and for LoRAs.

The BFL checkpoint (flux1-dev.safetensors, what ComfyUI's Load Diffusion Model reads) fuses what diffusers keeps
apart: a double block's q, k, v into `img_attn.qkv` (and the text stream's into `txt_attn.qkv`), a single block's
q, k, v and MLP input into `linear1`. Its norms are `.scale`, and the final layer's modulation stores (shift,
scale) where diffusers stores (scale, shift). The names and orders are those diffusers' own reader inverts
(`convert_flux_transformer_checkpoint_to_diffusers`, loaders/single_file_utils.py).

LoRAs in the kohya / BFL layout (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_linear1`)
are what ComfyUI loads for FLUX. A fused module gets one LoRA whose down is the parts' downs stacked and whose up
is block-diagonal (each part's up in its own rows and rank columns, zeros elsewhere), so up @ down stacks the
parts' deltas exactly; its rank is the sum of the parts', so its alpha is scaled by the number of parts to keep
alpha / rank. diffusers' kohya reader (`_convert_kohya_flux_lora_to_diffusers`) splits such a block-diagonal LoRA
back into the parts' own.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Callable

import torch

from ..errors import DmdrError

# outside the blocks: diffusers module -> BFL module
_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1",
}
# inside a double block: diffusers submodule -> (BFL submodule, part, parts)
_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0, 3), "attn.to_k": ("img_attn.qkv", 1, 3), "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3), "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
    "attn.to_out.0": ("img_attn.proj", 0, 1), "attn.to_add_out": ("txt_attn.proj", 0, 1),
    "ff.net.0.proj": ("img_mlp.0", 0, 1), "ff.net.2": ("img_mlp.2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, 1), "ff_context.net.2": ("txt_mlp.2", 0, 1),
    "norm1.linear": ("img_mod.lin", 0, 1), "norm1_context.linear": ("txt_mod.lin", 0, 1),
    "attn.norm_q": ("img_attn.norm.query_norm", 0, 1), "attn.norm_k": ("img_attn.norm.key_norm", 0, 1),
    "attn.norm_added_q": ("txt_attn.norm.query_norm", 0, 1), "attn.norm_added_k": ("txt_attn.norm.key_norm", 0, 1),
}
_SINGLE = {
    "attn.to_q": ("linear1", 0, 4), "attn.to_k": ("linear1", 1, 4), "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4), "proj_out": ("linear2", 0, 1), "norm.linear": ("modulation.lin", 0, 1),
    "attn.norm_q": ("norm.query_norm", 0, 1), "attn.norm_k": ("norm.key_norm", 0, 1),
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_SWAPPED = "final_layer.adaLN_modulation.1"  # (shift, scale) in BFL, (scale, shift) in diffusers
KOHYA_PREFIX = "lora_unet_"


def bfl_module(path: str) -> tuple[str, int, int] | None:
    """(BFL module, part, number of parts) of a diffusers FluxTransformer2DModel module path; None if it has none."""
    if path in _TOP:
        return _TOP[path], 0, 1
    match = _BLOCK.match(path)
    if match is None:
        return None
    kind, index, rest = match.groups()
    table, prefix = (_DOUBLE, "double_blocks") if kind == "transformer_blocks" else (_SINGLE, "single_blocks")
    if rest not in table:
        return None
    module, part, parts = table[rest]
    return f"{prefix}.{index}.{module}", part, parts


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (b, a) along dim 0: diffusers' scale-shift order <-> BFL's shift-scale (its own inverse)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_bfl(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full FluxTransformer2DModel state dict in the BFL layout (fused qkv / linear1, `.scale` norms, swapped
    final modulation). Every key must map and every fused module be complete."""
    groups: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    counts: dict[str, int] = {}
    for key, value in state_dict.items():
        path, _, param = key.rpartition(".")
        found = bfl_module(path)
        if found is None:
            raise DmdrError(f"{key} has no counterpart in the FLUX.1 (BFL) layout: not a FluxTransformer2DModel "
                            f"state dict")
        module, part, parts = found
        name = f"{module}.{'scale' if module.endswith('_norm') else param}"
        groups[name][part] = value
        counts[name] = parts
    out = {}
    for name, parts in groups.items():
        if len(parts) != counts[name]:
            raise DmdrError(f"{name}: {len(parts)} of its {counts[name]} fused parts are in the state dict")
        value = torch.cat([parts[i] for i in range(counts[name])], dim=0) if counts[name] > 1 else parts[0]
        out[name] = swap_halves(value) if name.startswith(_SWAPPED) else value
    return out


def kohya_flux_lora(adapter: dict[str, torch.Tensor], alpha: float, dtype: torch.dtype,
                    out_features: Callable[[str], int]) -> dict[str, torch.Tensor]:
    """peft LoRA of a FluxTransformer2DModel -> kohya keys on BFL modules (`lora_unet_<module with _>`).

    `out_features(path)` is the output width of a diffusers module, needed for the zero rows of fused parts the
    LoRA does not wrap (e.g. linear1's MLP part of a LoRA on q, k, v only).
    """
    from .kohya import adapter_modules

    fused: dict[str, dict[int, str]] = defaultdict(dict)
    shapes: dict[str, tuple[str, int]] = {}
    for path in adapter_modules(adapter):
        found = bfl_module(path)
        if found is None:
            raise DmdrError(f"the generator LoRA wraps {path}, which has no counterpart in the FLUX.1 (BFL) layout "
                            f"ComfyUI uses: export it with --format lora or --format safetensors")
        module, part, parts = found
        fused[module][part] = path
        shapes[module] = (path, parts)
    out: dict[str, torch.Tensor] = {}
    for module, parts in fused.items():
        first, n_parts = shapes[module]
        rows = [out_features(_sibling(first, module, i)) for i in range(n_parts)]
        downs = [adapter[f"{parts[i]}.lora_A.weight"].float() for i in sorted(parts)]
        down = torch.cat(downs, dim=0)
        up = down.new_zeros(sum(rows), down.shape[0])
        col = 0
        for i in sorted(parts):
            b = adapter[f"{parts[i]}.lora_B.weight"].float()
            up[sum(rows[:i]):sum(rows[:i]) + rows[i], col:col + b.shape[1]] = b
            col += b.shape[1]
        module_alpha = float(alpha) * len(parts)  # rank grew by the number of parts: keep alpha / rank
        if module == _SWAPPED:
            up = swap_halves(up)
        if module.startswith("final_layer."):
            # diffusers' kohya reader drops the final layer's alphas (scale 1): fold the scale into up instead
            up, module_alpha = up * (module_alpha / down.shape[0]), float(down.shape[0])
        name = KOHYA_PREFIX + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(module_alpha, dtype=torch.float32)
    return out


def _sibling(path: str, module: str, part: int) -> str:
    """The diffusers path of part `part` of the fused BFL `module` that `path` belongs to."""
    match = _BLOCK.match(path)
    if match is None:
        return path
    kind, index, _ = match.groups()
    table = _DOUBLE if kind == "transformer_blocks" else _SINGLE
    suffix = module.split(".", 2)[2]
    rest = next(r for r, (m, p, _) in table.items() if m == suffix and p == part)
    return f"{kind}.{index}.{rest}"
