"""`dmdr export`: a checkpoint's student as safetensors, a diffusers pipeline folder, a diffusers LoRA or a
ComfyUI (kohya) LoRA, with a README.md model card, top to bottom.

Everything the user can get wrong (no checkpoint, a format the generator or family cannot give, an
occupied --out) is refused before any weight loads; the files appear in --out only when all are written.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import DmdrError
from ..export.formats import DTYPES, FORMATS, write_comfyui, write_diffusers, write_lora, write_safetensors
from ..export.kohya import COMFYUI_FAMILIES
from ..export.model_card import model_card
from ..export.output import StagedOutput
from ..export.source import ExportSource, evaluation_results, open_checkpoint
from ..export.student import build_student
from ..runtime.checkpoint import as_os_errors


def _merge_choice(fmt: str, source: ExportSource, merge_lora: bool | None) -> bool:
    """Whether a LoRA generator is merged: the format decides unless --merge-lora / --no-merge-lora says otherwise."""
    if fmt in ("lora", "comfyui"):
        if merge_lora:
            raise DmdrError(f"--merge-lora does not apply to --format {fmt}, which writes the adapter itself: use "
                            f"--format safetensors for merged weights")
        return False
    if merge_lora is False:
        if source.lora is None:
            raise DmdrError(f"{source.checkpoint} holds a full fine-tune, not a LoRA: there is nothing to keep "
                            f"unmerged; drop --no-merge-lora")
        if fmt == "diffusers":
            raise DmdrError("a diffusers pipeline folder needs the full denoiser weights: drop --no-merge-lora, or "
                            "use --format lora (or safetensors --no-merge-lora) for the adapter alone")
    return merge_lora is not False


def check_request(source: ExportSource, fmt: str, dtype: str, merge_lora: bool | None,
                  copy_components: bool | None) -> bool:
    """Refuse what cannot be exported, before anything loads; returns whether to merge a LoRA."""
    if fmt not in FORMATS:
        raise DmdrError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise DmdrError(f"unknown --dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if fmt in ("lora", "comfyui") and source.lora is None:
        raise DmdrError(f"{source.checkpoint} holds a full fine-tune of the denoiser, not a LoRA "
                        f"(student.finetune: full): --format {fmt} needs a LoRA generator; use --format safetensors "
                        f"or --format diffusers")
    family = source.recipe.model.family
    if fmt == "comfyui" and family not in COMFYUI_FAMILIES:
        raise DmdrError(f"--format comfyui covers the {', '.join(COMFYUI_FAMILIES)} families, not {family}: "
                        f"use --format safetensors (merged weights for ComfyUI's Load Diffusion Model node) or "
                        f"--format lora")
    if copy_components is not None and fmt != "diffusers":
        raise DmdrError("--copy-components / --reference-components apply to --format diffusers only")
    return _merge_choice(fmt, source, merge_lora)


def run_export(checkpoint: str | Path, *, fmt: str, out: Path, dtype: str = "fp16", merge_lora: bool | None = None,
               overwrite: bool = False, copy_components: bool | None = None,
               console: Console | None = None) -> Path:
    console = console or Console(highlight=False)
    source = open_checkpoint(checkpoint)
    merge = check_request(source, fmt, dtype, merge_lora, copy_components)
    model = source.recipe.model
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
        else:
            writer = {"safetensors": write_safetensors, "lora": write_lora, "comfyui": write_comfyui}[fmt]
            files = writer(folder, student, DTYPES[dtype])
        card = model_card(student, fmt=fmt, files=files, dtype=dtype, copied=copy,
                          metrics=evaluation_results(source.run_dir))
        (folder / "README.md").write_text(card, encoding="utf-8")
    console.print(f"[green]exported[/] {source.checkpoint} (step {source.step}) as {fmt} to {output.out}")
    return output.out
