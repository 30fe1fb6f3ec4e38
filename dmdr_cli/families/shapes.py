"""Weight shapes of a local pipeline folder, read from safetensors headers without loading a tensor, and the
parameter counts that follow from them (LoRA sizes). The dry-run plan, the memory planner and `dmdr export`'s
checks of a full generator against its teacher all read them here.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..runtime.files import safetensors_header


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a .safetensors header, without reading the tensors (a damaged file: one line)."""
    header = safetensors_header(path, "model weights", fix="the model folder is damaged; download it again")
    return {k: v["shape"] for k, v in header.items()}


def weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors files diffusers loads for `variant` from a component folder: one file or its shards.
    A folder holding both fp32 and fp16 copies lists one of them (the other copy is never loaded)."""
    suffix = re.escape(f".{variant}") if variant else ""
    name = re.compile(rf"diffusion_pytorch_model{suffix}(-\d+-of-\d+)?\.safetensors")
    return sorted(p for p in folder.glob("diffusion_pytorch_model*.safetensors") if name.fullmatch(p.name))


def component_shapes(folder: Path, variant: str | None) -> dict[str, list[int]] | None:
    """Shapes of every tensor of one component folder (unet/, vae/, ...), None without weight files."""
    files = weight_files(folder, variant) if folder.is_dir() else []
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    return shapes


def denoiser_shapes(cfg) -> dict[str, list[int]] | None:
    """Shapes of the teacher's denoiser weights when they are on local disk, else None (hub id)."""
    from . import family_class

    if cfg.model.single_file and Path(cfg.model.single_file).is_file():
        return None  # original-layout keys: counts would need the conversion, which loads weights
    folder = Path(cfg.model.pretrained) / family_class(cfg.model.family).denoiser_subfolder
    return component_shapes(folder, cfg.model.variant)


def numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def lora_parameter_count(shapes: dict[str, list[int]], targets: list[str], rank: int) -> int:
    """Parameters peft adds for LoRA of `rank` on modules whose name ends with a target (peft's suffix match)."""
    total = 0
    for key, shape in shapes.items():
        if not key.endswith(".weight"):
            continue
        module = key[: -len(".weight")]
        if not any(module == t or module.endswith("." + t) for t in targets):
            continue
        if len(shape) == 2:  # Linear: A (r x in) + B (out x r)
            total += rank * (shape[0] + shape[1])
        elif len(shape) == 4:  # Conv: A (r x in x kh x kw) + B 1x1 (out x r)
            total += rank * (shape[1] * shape[2] * shape[3] + shape[0])
    return total


def lora_targets(cfg) -> tuple[list[str], list[str]]:
    """The generator's and the guidance adapter's LoRA targets: the recipe's, else the family's defaults."""
    from . import family_class

    cls = family_class(cfg.model.family)
    return (list(cfg.student.lora_targets or cls.generator_lora_targets),
            list(cfg.guidance.lora_targets or cls.guidance_lora_targets))
