"""`--init`: where the student starts when it does not start as the teacher.

Accepted: a dmdr checkpoint or run folder (generator, fake score and the generator-step counter, so the
DynaDG/DynaRS schedules continue), a denoiser state dict (.safetensors, or .bin/.pt read with
weights_only=True, e.g. DMD2's SDXL ODE-regression checkpoint), or a LoRA file for a LoRA generator.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DmdrError
from ..runtime import checkpoint as ckpt

# Prefixes that diffusers / kohya put before the denoiser's own module names in LoRA and model files.
_PREFIXES = ("unet.", "transformer.", "model.diffusion_model.", "base_model.model.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise DmdrError(f"--init {path} could not be read as safetensors ({e}): the file is damaged or "
                            f"not a weights file") from None
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with arbitrary objects: refused, never executed
            raise DmdrError(f"--init {path} is not a plain tensor file ({type(e).__name__}); convert it to "
                            f".safetensors") from None
        return sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    raise DmdrError(f"--init {path}: unknown file type {path.suffix!r}: give a .safetensors (or .bin/.pt) file, a dmdr "
                    f"checkpoint folder or a run folder")


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def apply_init(spec: str, nets) -> int:
    """Load `spec` into the networks; returns the generator step to continue from (0 for external weights)."""
    path = Path(spec)
    if path.is_dir():
        data = ckpt.load_checkpoint(ckpt.resolve_checkpoint(spec, path))
        nets.load_generator_state(data["tensors"]["generator"])
        nets.load_fake_state(data["tensors"]["fake"])
        return int(data["state"]["step"])
    if not path.is_file():
        raise DmdrError(f"--init {spec!r} does not exist: give a dmdr checkpoint or run folder, a denoiser state dict "
                        f"or a LoRA file")
    sd = strip_prefix(read_state_dict(path))
    is_lora = any("lora_" in k or "lora." in k for k in sd)
    lora_generator = nets.generator_switch is not None
    try:
        if is_lora and lora_generator:
            nets.load_generator_state({k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v
                                       for k, v in sd.items()})
        elif not is_lora and not lora_generator:
            nets.load_generator_state(sd)
        elif is_lora:
            raise DmdrError(f"--init {spec} is a LoRA file but student.finetune is full: set student.finetune=lora "
                            f"(with the file's rank), or merge the LoRA first")
        else:
            raise DmdrError(f"--init {spec} is a full state dict but student.finetune is lora: set "
                            f"student.finetune=full")
    except ValueError as e:
        raise DmdrError(f"--init {spec}: {e}") from None
    return 0
