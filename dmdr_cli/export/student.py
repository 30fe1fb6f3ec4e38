"""Rebuild the few-step student from its checkpoint: the teacher's denoiser + the generator weights.

A LoRA generator is attached exactly as training attached it (`dmd.networks.add_lora`, adapter
"generator", the trained rank / alpha / targets) and its weights loaded with peft. Merging uses
diffusers' `fuse_lora` + `unload_lora`: the denoiser is a diffusers `ModelMixin` with peft layers
injected by `add_adapter`, not a `PeftModel`, so peft's `merge_and_unload` is not available on it;
fuse/unload is diffusers' path for exactly this setup and leaves the plain model class, whose state
dict has the native diffusers keys (`...to_q.weight`, no `base_layer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dmd.networks import GENERATOR, add_lora, load_adapter_state
from ..errors import DmdrError
from ..families import Family, guidance_values_of, load_family
from .source import ExportSource


@dataclass
class Student:
    source: ExportSource
    family: Family
    denoiser: torch.nn.Module  # merged weights, or the teacher with the "generator" adapter attached
    merged: bool
    adapter: dict[str, torch.Tensor] | None  # peft adapter state dict (LoRA generators), keys without adapter name

    @property
    def times(self) -> list[float]:
        return self.family.times_for(self.source.recipe.student)

    @property
    def sampler(self) -> str:
        mode = self.source.recipe.student.sampler
        return self.family.default_sampler if mode == "auto" else mode

    @property
    def model_timesteps(self) -> list:
        """What the denoiser is told at each student time (eps/v UNets: integers 0..999; flow: 1000 t)."""
        return self.family.schedule.model_timestep(torch.tensor(self.times, dtype=torch.float64)).tolist()


def load_generator_tensors(source: ExportSource) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(source.generator_file))
    except (SafetensorError, OSError) as err:
        raise DmdrError(f"could not read {source.generator_file} ({err}): the checkpoint is damaged") from None


def build_student(source: ExportSource, *, merge: bool, dtype: torch.dtype = torch.float32,
                  with_text_encoders: bool = False, with_vae: bool = False) -> Student:
    """Load the teacher's denoiser on CPU and apply the generator weights; the text encoders and the VAE
    are loaded too only when asked (`dmdr sample` needs them, an export does not).

    A LoRA is merged in fp32 whatever `dtype` says, so rounding happens once, when the export is cast.
    """
    lora = source.lora
    load_dtype = torch.float32 if lora is not None else dtype
    family = load_family(source.recipe.model, device="cpu", dtype=load_dtype, with_text_encoders=with_text_encoders,
                         with_vae=with_vae, uncond_mode=source.recipe.guidance.uncond,
                         guidance_values=guidance_values_of(source.recipe))
    net = family.denoiser.eval().requires_grad_(False)
    tensors = load_generator_tensors(source)
    if lora is None:
        _load_full(net, tensors, source)
        return Student(source, family, net, merged=False, adapter=None)

    try:
        add_lora(net, GENERATOR, lora.rank, lora.alpha, lora.targets)
        load_adapter_state(net, GENERATOR, tensors)
    except ValueError as err:
        raise DmdrError(f"{source.generator_file} does not fit the teacher {source.recipe.model.pretrained} with a "
                        f"rank-{lora.rank} LoRA on {lora.targets}: {err}") from None
    net.requires_grad_(False)
    if merge:
        try:
            net.fuse_lora(adapter_names=[GENERATOR], safe_fusing=True)  # safe: refuse NaN weights
        except ValueError as err:
            raise DmdrError(f"merging the generator LoRA of {source.checkpoint} failed ({err}): the checkpoint "
                            f"holds non-finite weights") from None
        net.unload_lora()
    return Student(source, family, net, merged=merge, adapter=tensors)


def _load_full(net: torch.nn.Module, tensors: dict[str, torch.Tensor], source: ExportSource) -> None:
    try:
        missing, unexpected = net.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # size mismatches (a teacher whose shapes were not known before loading)
        raise DmdrError(f"{source.generator_file} does not match the teacher's {type(net).__name__} "
                        f"({str(err).strip().splitlines()[-1].strip()}): check model.pretrained in the checkpoint's "
                        f"recipe.yaml") from None
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise DmdrError(f"{source.generator_file} does not match the teacher's {type(net).__name__} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {example}): check "
                        f"model.pretrained in the checkpoint's recipe.yaml")
