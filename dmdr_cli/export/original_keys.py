"""diffusers / transformers state dicts -> the original single-file checkpoint layouts (the keys A1111, Forge,
ComfyUI's Load Checkpoint and diffusers' `from_single_file` read).

Each function takes a component's state dict (and config) and returns its tensors under the original names,
prefix included; a key it does not know is an error, never silently dropped. The names are the inverse of
diffusers' readers in `diffusers/loaders/single_file_utils.py` (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`, `convert_sd3_transformer_checkpoint_to_diffusers`),
and the tests load every file back through them.

- UNet (SD1.x LDM / SDXL SGM, `model.diffusion_model.`): the block numbering of `kohya.sgm_block_names`.
- VAE (`first_stage_model.`): `down.i.block.j` / `up.(n-1-i).block.j` (the decoder counts its levels from the
  bottom), `mid.block_1/2`, `mid.attn_1` whose q / k / v / proj_out are 1x1 convolutions ([C, C, 1, 1]).
- CLIP (transformers layout under the checkpoint's prefix, always with `text_model.`); OpenCLIP (SDXL's
  second encoder): fused `attn.in_proj_weight` = [q; k; v], `text_projection` stored transposed.
- SD3 MMDiT (`model.diffusion_model.`): fused qkv per stream, `ln_q` / `ln_k` (SD3.5's qk norm), `attn2`
  (SD3.5-Medium's dual attention); the blocks whose adaLN produce (shift, scale) where diffusers' produce
  (scale, shift) -- the last context block and the final layer -- have their halves swapped.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import DmdrError
from .kohya import sgm_block_names, sgm_module_name

Converter = Callable[[dict, dict], dict]  # (state dict, component config) -> original-layout tensors

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class _Keys:
    """The tensors of one state dict, taken one by one; whatever nobody took is an error at the end."""

    def __init__(self, state: dict[str, torch.Tensor], component: str):
        self.left = dict(state)
        self.component = component

    def take(self, key: str) -> torch.Tensor:
        if key not in self.left:
            raise DmdrError(f"the {self.component} has no {key}: it is not a model the single-file layout covers")
        return self.left.pop(key)

    def fused(self, keys: list[str]) -> torch.Tensor:
        return torch.cat([self.take(k) for k in keys])

    def done(self) -> None:
        if self.left:
            raise DmdrError(f"the {self.component} holds {len(self.left)} weights the single-file layout has no place "
                            f"for (e.g. {next(iter(self.left))}): export with --format diffusers or safetensors")


def _rename(state: dict, component: str, rename: Callable[[str], str | None], prefix: str) -> dict:
    keys = _Keys(state, component)
    out = {}
    for key in list(state):
        new = rename(key)
        if new is not None:
            out[prefix + new] = keys.take(key)
    keys.done()
    return out


# ---- UNet ----------------------------------------------------------------------------------------------

def ldm_unet(state: dict, config: dict) -> dict:
    """UNet2DConditionModel -> `model.diffusion_model.*` (SD1.x and SDXL share the layout)."""
    blocks = sgm_block_names(config)

    def rename(key: str) -> str | None:
        module, _, param = key.rpartition(".")
        name = sgm_module_name(module, blocks)
        return None if name is None else f"{name}.{param}"

    return _rename(state, "UNet", rename, UNET_PREFIX)


# ---- VAE -----------------------------------------------------------------------------------------------

_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_name(key: str, levels: int) -> str | None:
    parts = key.split(".")
    side = parts[0]
    if side not in ("encoder", "decoder"):
        return key if parts[0] in ("quant_conv", "post_quant_conv") else None
    rest = ".".join(parts[1:])
    if parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] == "conv_norm_out":
        return f"{side}.norm_out.{parts[-1]}"
    if parts[1] in ("down_blocks", "up_blocks"):
        level = int(parts[2]) if side == "encoder" else levels - 1 - int(parts[2])
        group = "down" if side == "encoder" else "up"
        if parts[3] == "resnets":
            return f"{side}.{group}.{level}.block.{parts[4]}.{_vae_resnet('.'.join(parts[5:]))}"
        sampler = "downsample" if side == "encoder" else "upsample"
        if parts[3] in ("downsamplers", "upsamplers") and parts[4] == "0":
            return f"{side}.{group}.{level}.{sampler}.{'.'.join(parts[5:])}"
        return None
    if rest.startswith("mid_block.resnets."):
        return f"{side}.mid.block_{int(parts[3]) + 1}.{_vae_resnet('.'.join(parts[4:]))}"
    if rest.startswith("mid_block.attentions.0."):
        module, param = ".".join(parts[4:-1]), parts[-1]
        return f"{side}.mid.attn_1.{_VAE_ATTENTION[module]}.{param}" if module in _VAE_ATTENTION else None
    return None


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def ldm_vae(state: dict, config: dict) -> dict:
    """AutoencoderKL -> `first_stage_model.*`; attention projections as the 1x1 convolutions they are there."""
    levels = len(config["up_block_types"])
    out = _rename(state, "VAE", lambda key: _vae_name(key, levels), VAE_PREFIX)
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


# ---- text encoders ---------------------------------------------------------------------------------------

def clip(prefix: str, *, projection_unused: bool = False) -> Converter:
    """A transformers CLIP text model under `prefix` (+ `text_model.`; transformers >= 5.6 saves CLIPTextModel
    without it, the original files always have it).

    `projection_unused`: the layout's readers ignore the text projection (SD3's CLIP-L: diffusers sets it to
    the identity, ComfyUI pools without it), so a base model whose projection is not the identity is refused:
    its file would not sample like its pipeline.
    """

    def convert(state: dict, config: dict) -> dict:
        projection = state.get("text_projection.weight")
        if projection_unused and projection is not None and not torch.equal(
                projection, torch.eye(*projection.shape, dtype=projection.dtype)):
            raise DmdrError("the base model's CLIP-L text projection is not the identity, which single-file readers "
                            "of this family assume: the file would not sample like the pipeline; use --format "
                            "diffusers, or --denoiser-only with the base model's own text encoders")

        def rename(key: str) -> str:
            return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key

        return _rename(state, "text encoder", rename, prefix)

    return convert


_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def open_clip(prefix: str) -> Converter:
    """CLIPTextModelWithProjection -> OpenCLIP's text tower (SDXL's `conditioner.embedders.1.model.`)."""

    def convert(state: dict, config: dict) -> dict:
        keys = _Keys({k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
                      for k, v in state.items()}, "second text encoder")
        out = {"token_embedding.weight": keys.take("text_model.embeddings.token_embedding.weight"),
               "positional_embedding": keys.take("text_model.embeddings.position_embedding.weight"),
               "ln_final.weight": keys.take("text_model.final_layer_norm.weight"),
               "ln_final.bias": keys.take("text_model.final_layer_norm.bias"),
               "text_projection": keys.take("text_projection.weight").T.contiguous()}
        layers = sorted({int(k.split(".")[3]) for k in keys.left if k.startswith("text_model.encoder.layers.")})
        for n in layers:
            src, dst = f"text_model.encoder.layers.{n}.", f"transformer.resblocks.{n}."
            for param in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{param}"] = keys.fused(
                    [f"{src}self_attn.{p}_proj.{param}" for p in ("q", "k", "v")])
                for ours, theirs in _OPEN_CLIP_LAYER.items():
                    out[f"{dst}{theirs}.{param}"] = keys.take(f"{src}{ours}.{param}")
        keys.done()
        return {prefix + k: v for k, v in out.items()}

    return convert


def t5(prefix: str) -> Converter:
    """T5EncoderModel under `prefix`, keys unchanged (`shared.weight`, `encoder.block.N...`)."""

    def convert(state: dict, config: dict) -> dict:
        return {prefix + k: v for k, v in state.items()}

    return convert


# ---- SD3 MMDiT -------------------------------------------------------------------------------------------

def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """(scale, shift) <-> (shift, scale) along dim 0: its own inverse."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first])


def sd3_mmdit(state: dict, config: dict) -> dict:
    """SD3Transformer2DModel -> SD3 / SD3.5 single-file `model.diffusion_model.*`."""
    keys = _Keys(state, "SD3 transformer")
    out = {"pos_embed": keys.take("pos_embed.pos_embed")}
    simple = {"x_embedder.proj": "pos_embed.proj", "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
              "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2", "context_embedder": "context_embedder",
              "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
              "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2", "final_layer.linear": "proj_out"}
    for theirs, ours in simple.items():
        for param in ("weight", "bias"):
            out[f"{theirs}.{param}"] = keys.take(f"{ours}.{param}")
    for param in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{param}"] = _swap_halves(keys.take(f"norm_out.linear.{param}"))

    last = config["num_layers"] - 1
    for i in range(config["num_layers"]):
        src, x, ctx = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        pairs = {f"{x}attn.proj": "attn.to_out.0", f"{x}adaLN_modulation.1": "norm1.linear",
                 f"{x}mlp.fc1": "ff.net.0.proj", f"{x}mlp.fc2": "ff.net.2"}
        if i != last:  # the last context block only feeds the image stream: no output projection, no MLP
            pairs.update({f"{ctx}attn.proj": "attn.to_add_out", f"{ctx}adaLN_modulation.1": "norm1_context.linear",
                          f"{ctx}mlp.fc1": "ff_context.net.0.proj", f"{ctx}mlp.fc2": "ff_context.net.2"})
        dual = f"{src}attn2.to_q.weight" in keys.left
        if dual:
            pairs[f"{x}attn2.proj"] = "attn2.to_out.0"
        for param in ("weight", "bias"):
            for theirs, ours in pairs.items():
                out[f"{theirs}.{param}"] = keys.take(f"{src}{ours}.{param}")
            out[f"{x}attn.qkv.{param}"] = keys.fused([f"{src}attn.to_{p}.{param}" for p in "qkv"])
            out[f"{ctx}attn.qkv.{param}"] = keys.fused([f"{src}attn.add_{p}_proj.{param}" for p in "qkv"])
            if dual:
                out[f"{x}attn2.qkv.{param}"] = keys.fused([f"{src}attn2.to_{p}.{param}" for p in "qkv"])
            if i == last:
                out[f"{ctx}adaLN_modulation.1.{param}"] = _swap_halves(keys.take(f"{src}norm1_context.linear.{param}"))
        norms = {f"{x}attn.ln_q": "attn.norm_q", f"{x}attn.ln_k": "attn.norm_k",
                 f"{ctx}attn.ln_q": "attn.norm_added_q", f"{ctx}attn.ln_k": "attn.norm_added_k",
                 f"{x}attn2.ln_q": "attn2.norm_q", f"{x}attn2.ln_k": "attn2.norm_k"}
        for theirs, ours in norms.items():  # SD3.5's RMS qk norm: a weight each
            if f"{src}{ours}.weight" in keys.left:
                out[f"{theirs}.weight"] = keys.take(f"{src}{ours}.weight")
    keys.done()
    return {UNET_PREFIX + k: v for k, v in out.items()}
