"""`dmdr export`: a checkpoint's student as safetensors, a diffusers pipeline folder, a diffusers LoRA, a ComfyUI
(kohya) LoRA or a single-file checkpoint, with a README.md model card, top to bottom.

Everything the user can get wrong (no checkpoint, a format the generator or family cannot give, an
occupied --out) is refused before any weight loads; the files appear in --out only when all are written.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import DmdrError
from ..export.formats import (DTYPES, FORMATS, write_comfyui, write_diffusers, write_lora, write_pixel_pipeline,
                              write_safetensors, write_single_file, writes_single_file)
from ..export.kohya import COMFYUI_FAMILIES
from ..export.model_card import model_card
from ..export.output import StagedOutput
from ..export.single_file import check_latent, check_single_file, denoiser_alone
from ..export.source import ExportSource, evaluation_results, open_checkpoint
from ..export.student import build_student
from ..runtime.checkpoint import as_os_errors


def _merge_choice(fmt: str, source: ExportSource, merge_lora: bool | None) -> bool:
    """Whether a LoRA generator is merged: the format decides unless --merge-lora / --no-merge-lora says otherwise."""
    if merge_lora is False and source.lora is None:
        raise DmdrError(f"{source.checkpoint} holds a full fine-tune, not a LoRA: there is nothing to keep "
                        f"unmerged; drop --no-merge-lora")
    if fmt == "lora":
        if merge_lora:
            raise DmdrError("--merge-lora does not apply to --format lora, which writes the adapter itself: use "
                            "--format safetensors or single-file for merged weights")
        return False
    if fmt == "comfyui":  # the kohya LoRA, unless --merge-lora asks for a merged single-file checkpoint
        return bool(merge_lora)
    if merge_lora is False and fmt in ("diffusers", "single-file"):
        raise DmdrError(f"{'a diffusers pipeline folder' if fmt == 'diffusers' else 'a single-file checkpoint'} "
                        f"needs the full denoiser weights: drop --no-merge-lora, or use --format lora (or "
                        f"safetensors --no-merge-lora, comfyui) for the adapter alone")
    return merge_lora is not False


def check_request(source: ExportSource, fmt: str, dtype: str, merge_lora: bool | None,
                  copy_components: bool | None, denoiser_only: bool = False) -> bool:
    """Refuse what cannot be exported, before anything loads; returns whether to merge a LoRA."""
    if fmt not in FORMATS:
        raise DmdrError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise DmdrError(f"unknown --dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if fmt == "lora" and source.lora is None:
        raise DmdrError(f"{source.checkpoint} holds a full fine-tune of the denoiser, not a LoRA "
                        f"(student.finetune: full): --format lora needs a LoRA generator; use --format safetensors, "
                        f"single-file or diffusers")
    if copy_components is not None and fmt != "diffusers":
        raise DmdrError("--copy-components / --reference-components apply to --format diffusers only")
    merge = _merge_choice(fmt, source, merge_lora)
    if writes_single_file(fmt, full_weights=source.lora is None or merge):
        check_single_file(source.recipe.model, denoiser_only=denoiser_only)
        return merge
    if denoiser_only:
        raise DmdrError(f"--denoiser-only applies to single-file checkpoints (--format single-file, or comfyui of "
                        f"full or merged weights), not to --format {fmt}")
    family = source.recipe.model.family
    if fmt == "comfyui":
        check_latent(source.recipe.model)
    if fmt == "comfyui" and family not in COMFYUI_FAMILIES:
        raise DmdrError(f"--format comfyui covers the {' and '.join(COMFYUI_FAMILIES)} families, not {family}, for "
                        f"LoRAs: use --format lora, or --merge-lora for a merged single-file checkpoint")
    return merge


def run_export(checkpoint: str | Path, *, fmt: str, out: Path, dtype: str = "fp16", merge_lora: bool | None = None,
               overwrite: bool = False, copy_components: bool | None = None, denoiser_only: bool = False,
               console: Console | None = None) -> Path:
    console = console or Console(highlight=False)
    source = open_checkpoint(checkpoint)
    merge = check_request(source, fmt, dtype, merge_lora, copy_components, denoiser_only)
    model = source.recipe.model
    if writes_single_file(fmt, full_weights=source.lora is None or merge):
        denoiser_only = denoiser_alone(model.family, denoiser_only)
    protected = [source.checkpoint] + [p for p in (source.teacher_folder, model.single_file) if p]
    output = StagedOutput(out, overwrite=overwrite, protected=protected)
    output.check()

    with console.status(f"loading the student of {source.checkpoint}"):
        student = build_student(source, merge=merge, dtype=DTYPES[dtype])
    copy = copy_components is not False
    # as_os_errors: safetensors reports disk-full / permission failures as its own type; as OSErrors they reach
    # StagedOutput, which discards the partial folder and says what failed in one line
    with output as folder, as_os_errors(), console.status(f"writing {fmt} export"):
        if fmt == "diffusers":
            files = write_diffusers(folder, student, DTYPES[dtype], copy_components=copy)
        elif fmt in ("single-file", "comfyui"):
            writer = write_single_file if fmt == "single-file" else write_comfyui
            files = writer(folder, student, DTYPES[dtype], denoiser_only=denoiser_only)
        else:
            writer = {"safetensors": write_safetensors, "lora": write_lora}[fmt]
            files = writer(folder, student, DTYPES[dtype])
        if student.family.pixel_space:
            files += write_pixel_pipeline(folder)
        card = model_card(student, fmt=fmt, files=files, dtype=dtype, copied=copy,
                          metrics=evaluation_results(source.run_dir), denoiser_only=denoiser_only)
        (folder / "README.md").write_text(card, encoding="utf-8")
    console.print(f"[green]exported[/] {source.checkpoint} (step {source.step}) as {fmt} to {output.out}")
    return output.out
