"""`dmdr export`: a checkpoint's student as safetensors, a diffusers pipeline folder, a diffusers LoRA, a ComfyUI
(kohya) LoRA or a single-file checkpoint, with a README.md model card, top to bottom.

Everything the user can get wrong (no checkpoint, a format the generator or family cannot give, an
occupied --out) is refused before any weight loads; the files appear in --out only when all are written.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import DmdrError
from ..export import hub
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
               push_to_hub: str | None = None, private: bool = False, console: Console | None = None) -> Path:
    console = console or Console(highlight=False)
    if private and not push_to_hub:
        raise DmdrError("--private applies to the repo --push-to-hub creates: add --push-to-hub REPO_ID")
    if push_to_hub:
        hub.check_repo_id(push_to_hub)
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
        card = hub.add_hub_metadata(card, student, fmt, folder)
        (folder / "README.md").write_text(card, encoding="utf-8")
    console.print(f"[green]exported[/] {source.checkpoint} (step {source.step}) as {fmt} to {output.out}")
    if push_to_hub:
        plan = hub.upload_plan(output.out, push_to_hub, private=private,
                               commit_message=hub.export_commit_message(source, fmt))
        with console.status(f"pushing {len(plan.files)} files to {push_to_hub}"):
            url = hub.push(plan, output.out)
        console.print(f"[green]pushed[/] to https://huggingface.co/{push_to_hub} ({url})")
    return output.out


def push_format(cfg) -> str:
    fmt = cfg.output.push.format
    return fmt if fmt != "auto" else ("lora" if cfg.student.finetune == "lora" else "diffusers")


def check_push(cfg) -> None:
    """`output.push` checked before a run trains: a repo id, a format the generator can give, a token, online."""
    push = cfg.output.push
    if not push.repo_id:
        return
    hub.check_repo_id(push.repo_id, "output.push.repo_id")
    fmt = push_format(cfg)
    if fmt == "lora" and cfg.student.finetune != "lora":
        raise DmdrError(f"output.push.format is lora but student.finetune is {cfg.student.finetune}: a full "
                        f"fine-tune exports as safetensors, diffusers, single-file or comfyui")
    if fmt == "comfyui" and cfg.model.family not in COMFYUI_FAMILIES:
        raise DmdrError(f"output.push.format comfyui covers the {' and '.join(COMFYUI_FAMILIES)} families, not "
                        f"{cfg.model.family}: use safetensors or lora")
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise DmdrError("output.push.repo_id is set but the Hub is offline here (HF_HUB_OFFLINE=1): unset it, or "
                        "remove output.push and upload later with dmdr export --push-to-hub")
    if not get_token():
        raise DmdrError("output.push.repo_id needs a Hugging Face token: run `hf auth login` (or set HF_TOKEN) "
                        "before the run, or remove output.push")


def push_run(cfg, checkpoint: Path, run_dir: Path, console: Console) -> Path:
    """The end of a run with output.push: export the final checkpoint into RUN/export and upload it."""
    push = cfg.output.push
    return run_export(checkpoint, fmt=push_format(cfg), out=run_dir / "export", dtype=push.dtype, overwrite=True,
                      push_to_hub=push.repo_id, private=push.private, console=console)
