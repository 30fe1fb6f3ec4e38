"""`dmdr export`: a checkpoint's student as safetensors, a diffusers pipeline folder, a diffusers LoRA or a
ComfyUI (kohya) LoRA, with a README.md model card, top to bottom.

Everything the user can get wrong (no checkpoint, a format the generator or family cannot give, an
occupied --out) is refused before any weight loads; the files appear in --out only when all are written.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import DmdrError
from ..export import hub
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
        raise DmdrError(f"--format comfyui covers the {' and '.join(COMFYUI_FAMILIES)} families, not {family}: "
                        f"use --format safetensors (merged weights for ComfyUI's Load Diffusion Model node) or "
                        f"--format lora")
    if copy_components is not None and fmt != "diffusers":
        raise DmdrError("--copy-components / --reference-components apply to --format diffusers only")
    return _merge_choice(fmt, source, merge_lora)


def run_export(checkpoint: str | Path, *, fmt: str, out: Path, dtype: str = "fp16", merge_lora: bool | None = None,
               overwrite: bool = False, copy_components: bool | None = None, push_to_hub: str | None = None,
               private: bool = False, console: Console | None = None) -> Path:
    console = console or Console(highlight=False)
    if private and not push_to_hub:
        raise DmdrError("--private applies to the repo --push-to-hub creates: add --push-to-hub REPO_ID")
    if push_to_hub:
        hub.check_repo_id(push_to_hub)
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
    if fmt in ("lora", "comfyui") and cfg.student.finetune != "lora":
        raise DmdrError(f"output.push.format is {fmt} but student.finetune is {cfg.student.finetune}: a full "
                        f"fine-tune exports as safetensors or diffusers")
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
