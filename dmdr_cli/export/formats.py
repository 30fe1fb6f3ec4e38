"""The export formats, each a function that writes its files into a (staging) folder.

- safetensors: the denoiser's weights in its native diffusers key layout, one file (a LoRA merged, or
  with --no-merge-lora the adapter alone in diffusers' LoRA layout).
- diffusers:   a complete pipeline folder with the student's denoiser and a scheduler that reproduces
  the student's sampler (export/scheduler.py); or, with --reference-components, only those two.
- lora:        diffusers-format LoRA (`pipe.load_lora_weights(folder)`), with peft adapter metadata.
- comfyui:     a LoRA in the kohya / ComfyUI key layout (export/kohya.py; FLUX: the BFL modules,
  export/flux_bfl.py); full (or merged) weights as a single-file checkpoint.
- single-file: the pipeline in the original checkpoint layout, one file (export/single_file.py), or with
  --denoiser-only the denoiser alone in that layout.

A pixel-space model (no VAE) has no diffusers pipeline class: its exports also hold pixel_pipeline.py, the
pipeline its model card loads with `trust_remote_code=True`.

Each returns the names of the files it wrote, for the model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .. import __version__
from ..errors import DmdrError
from .kohya import comfyui_lora
from .output import inside
from .scheduler import StudentScheduler, build_scheduler, student_scheduler
from .single_file import file_name, single_file_tensors
from .student import Student

FORMATS = ("safetensors", "diffusers", "lora", "comfyui", "single-file")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name: load_lora_weights(folder) finds it
COMFYUI_FILE = "comfyui_lora.safetensors"
PIXEL_PIPELINE_FILE = "pixel_pipeline.py"
PIXEL_PIPELINE_CLASS = "PixelDiffusionPipeline"


def writes_single_file(fmt: str, full_weights: bool) -> bool:
    """--format single-file, and --format comfyui of full (or merged) weights: ComfyUI loads those as checkpoints."""
    return fmt == "single-file" or (fmt == "comfyui" and full_weights)


def scheduler_spec(student: Student) -> StudentScheduler:
    """The diffusers scheduler and pipeline call that sample this student as dmdr does."""
    return student_scheduler(student.family, student.times, student.sampler)


def export_metadata(student: Student) -> dict[str, str]:
    """safetensors metadata (strings only): enough to know what the file is and how to sample it."""
    source = student.source
    meta = {
        "format": "pt",
        "dmdr.version": __version__,
        "dmdr.family": source.recipe.model.family,
        "dmdr.base_model": source.recipe.model.pretrained,
        "dmdr.step": str(source.step),
        "dmdr.student_times": json.dumps(student.times),
        "dmdr.model_timesteps": json.dumps(student.model_timesteps),
        "dmdr.sampler": student.sampler,
        "dmdr.generator": generator_kind(student),
        "dmdr.recipe": source.recipe_yaml,
    }
    if source.lora is not None:
        meta.update({"dmdr.lora_rank": str(source.lora.rank), "dmdr.lora_alpha": repr(source.lora.alpha),
                     "dmdr.lora_targets": json.dumps(source.lora.targets)})
    return meta


def generator_kind(student: Student) -> str:
    if student.source.lora is None:
        return "full"
    return "lora-merged" if student.merged else "lora"


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


# ---- diffusers LoRA layout (shared by `lora` and unmerged `safetensors`) ---------------------------------

def diffusers_lora(student: Student, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The adapter packed as the pipeline's `save_lora_weights` packs it (`unet.` / `transformer.` prefix) and
    the peft LoraConfig under diffusers' metadata key, so `load_lora_weights` rebuilds the exact alpha / rank."""
    import diffusers
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from peft import LoraConfig

    lora = student.source.lora
    prefix = student.family.denoiser_subfolder
    pipeline_cls = getattr(diffusers, student.family.pipeline_class)
    tensors = pipeline_cls.pack_weights(_cast(student.adapter, dtype), prefix)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.targets).to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    adapter_meta = json.dumps({f"{prefix}.{k}": v for k, v in config.items()}, indent=2, sort_keys=True, default=str)
    return tensors, {LORA_ADAPTER_METADATA_KEY: adapter_meta}


# ---- formats ---------------------------------------------------------------------------------------------

def write_safetensors(folder: Path, student: Student, dtype: torch.dtype) -> list[str]:
    sub = student.family.denoiser_subfolder
    if student.merged or student.source.lora is None:
        name = f"{sub}.safetensors"
        _save(_cast(student.denoiser.state_dict(), dtype), inside(folder, name), export_metadata(student))
    else:
        name = f"{sub}_lora.safetensors"
        tensors, lora_meta = diffusers_lora(student, dtype)
        _save(tensors, inside(folder, name), {**export_metadata(student), **lora_meta})
    return [name]


def write_lora(folder: Path, student: Student, dtype: torch.dtype) -> list[str]:
    tensors, lora_meta = diffusers_lora(student, dtype)
    _save(tensors, inside(folder, LORA_FILE), {**export_metadata(student), **lora_meta})
    return [LORA_FILE]


def write_single_file(folder: Path, student: Student, dtype: torch.dtype, denoiser_only: bool = False) -> list[str]:
    name = file_name(student, denoiser_only)
    _save(single_file_tensors(student, dtype, denoiser_only=denoiser_only), inside(folder, name),
          export_metadata(student))
    return [name]


def write_comfyui(folder: Path, student: Student, dtype: torch.dtype, denoiser_only: bool = False) -> list[str]:
    """A LoRA in the kohya layout; full or merged weights as the single-file checkpoint ComfyUI loads."""
    if student.merged or student.source.lora is None:
        return write_single_file(folder, student, dtype, denoiser_only)
    lora = student.source.lora
    tensors = comfyui_lora(student.source.recipe.model.family, student.adapter, lora.alpha, dtype, student.denoiser)
    # kohya's own metadata keys, shown by ComfyUI / A1111 metadata viewers
    kohya_meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(lora.rank),
                  "ss_network_alpha": repr(lora.alpha)}
    _save(tensors, inside(folder, COMFYUI_FILE), {**export_metadata(student), **kohya_meta})
    return [COMFYUI_FILE]


def write_diffusers(folder: Path, student: Student, dtype: torch.dtype, copy_components: bool) -> list[str]:
    """The student's denoiser + scheduler; with `copy_components` also the teacher's other components and
    model_index.json (a complete pipeline folder). Without them diffusers cannot load the folder alone: the
    model card gives the `from_pretrained(teacher, unet=..., scheduler=...)` call instead."""
    family, model = student.family, student.source.recipe.model
    sub = family.denoiser_subfolder
    spec = scheduler_spec(student)
    student.denoiser.to(dtype).save_pretrained(inside(folder, sub), safe_serialization=True, variant=model.variant)
    build_scheduler(family.components.scheduler_config, spec).save_pretrained(inside(folder, "scheduler"))
    if not copy_components:
        return [sub, "scheduler"]
    teacher = teacher_files(model, family.name)
    index = json.loads((teacher / "model_index.json").read_text())
    written = [sub, "scheduler"]
    for name, entry in index.items():
        if name in (sub, "scheduler") or not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            continue
        try:
            shutil.copytree(teacher / name, inside(folder, name))  # symlinks (hub cache) become real files
        except OSError as err:
            raise DmdrError(f"could not copy {name}/ from the teacher {teacher} ({err.strerror or err}): check the "
                            f"folder is complete, or pass --reference-components") from None
        written.append(name)
    index["scheduler"] = ["diffusers", spec.class_name]
    if family.pixel_space:  # diffusers has no pipeline class for it: the folder's own code (write_pixel_pipeline)
        index = {"_class_name": [Path(PIXEL_PIPELINE_FILE).stem, PIXEL_PIPELINE_CLASS],
                 "_diffusers_version": index.get("_diffusers_version"),
                 **{name: index[name] for name in pixel_pipeline_components()}}
    inside(folder, "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


def pixel_pipeline_components() -> list[str]:
    import inspect

    from .pixel_pipeline import PixelDiffusionPipeline

    return [name for name in inspect.signature(PixelDiffusionPipeline.__init__).parameters if name != "self"]


def write_pixel_pipeline(folder: Path) -> list[str]:
    """pixel_pipeline.py, the pipeline a pixel-space model's card loads (diffusers has none without a VAE)."""
    shutil.copyfile(Path(__file__).with_name(PIXEL_PIPELINE_FILE), inside(folder, PIXEL_PIPELINE_FILE))
    return [PIXEL_PIPELINE_FILE]


def teacher_files(model_cfg, family: str) -> Path:
    """The teacher pipeline as a local folder: the folder itself, or the hub cache's snapshot."""
    from ..families.loading import resolve_pipeline

    source = resolve_pipeline(model_cfg, family)
    if source.local:
        return Path(source.pretrained)
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json"] + [f"{name}/*" for name in source.index if source.has(name)]
    try:
        return Path(snapshot_download(source.pretrained, revision=source.revision, allow_patterns=patterns))
    except (OSError, ValueError) as err:
        raise DmdrError(f"could not get the components of {source.pretrained} to copy ({str(err).splitlines()[0]}): "
                        f"download the model first, or pass --reference-components") from None
