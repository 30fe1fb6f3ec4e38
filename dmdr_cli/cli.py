"""The `dmdr` command line. Heavy imports (torch, diffusers) happen inside the commands so `--help` is instant.

Every command turns a `DmdrError` into one red line and exit code 2; set DMDR_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import DmdrError

app = typer.Typer(
    name="dmdr",
    help="Distil a multi-step text-to-image model (SDXL, SD3, SD3.5) into a 1-4 step generator that beats it: "
         "DMD + RL, image-free.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Inspect and check recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False)


def user_errors(fn):
    """Turn the user's mistakes into one red line and exit 2 (DMDR_DEBUG=1 re-raises)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DmdrError as e:
            if os.environ.get("DMDR_DEBUG") == "1":
                raise
            err_console.print(f"[bold red]error:[/] {e.message}", markup=True, highlight=False)
            raise typer.Exit(e.exit_code) from None

    return wrapper


RecipeArg = typer.Argument(..., help="Path of a YAML recipe (see recipes/).", show_default=False)
OverridesArg = typer.Argument(None, help="key.path=value overrides, e.g. train.steps=100 rl.weight=0.3",
                              show_default=False)


def _train_command(stage: str):
    """distill and coldstart share one signature; they differ only in which stages run."""

    @user_errors
    def command(
        recipe: Path = RecipeArg,
        overrides: Optional[List[str]] = OverridesArg,
        dry_run: bool = typer.Option(False, "--dry-run", help="Validate, print the resolved recipe and plan, load nothing."),
        init: Optional[str] = typer.Option(None, "--init", help="Start from a coldstart checkpoint, a denoiser state dict "
                                                                "or a LoRA file."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue a run: 'latest' or a checkpoint path."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (overrides output.dir)."),
    ):
        from .recipe import load_recipe

        items = list(overrides or [])
        if output is not None:
            items.append(f"output.dir={output}")
        cfg = load_recipe(recipe, items)
        from .engines.plan import print_plan

        print_plan(cfg, stage=stage, init=init, resume=resume, console=console)
        if dry_run:
            return
        from .engines.train import run_training

        run_training(cfg, stage=stage, init=init, resume=resume, console=console)

    return command


app.command(
    "distill",
    help="Train the few-step student: DMD (+ the RL branch from rl.start_step). With coldstart.steps > 0 the "
         "cold start runs first in the same call.\n\n"
         "Examples:\n\n"
         "  dmdr distill recipes/world/dmdr.yaml\n\n"
         "  dmdr distill recipes/sd3-medium/4step-refl.yaml --init runs/sd3m-cold/checkpoints/latest\n\n"
         "  dmdr distill recipe.yaml train.steps=100 train.batch_size=2 --dry-run\n\n"
         "  accelerate launch --num_processes 8 -m dmdr_cli distill recipe.yaml --resume latest",
)(_train_command("distill"))

app.command(
    "coldstart",
    help="Stage 1 only: DMD with DynaDG and DynaRS for coldstart.steps generator steps, no RL; writes a "
         "checkpoint for `dmdr distill --init`.\n\n"
         "Examples:\n\n"
         "  dmdr coldstart recipes/sd3-medium/4step-refl.yaml\n\n"
         "  dmdr coldstart recipes/sdxl/4step-refl.yaml coldstart.steps=500 --dry-run",
)(_train_command("coldstart"))


@recipe_app.command("validate", help="Check a recipe (and overrides) without loading anything.\n\n"
                                     "Example: dmdr recipe validate recipes/sdxl/1step-refl.yaml train.steps=10")
@user_errors
def recipe_validate(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg):
    from .recipe import load_recipe

    load_recipe(recipe, list(overrides or []))
    console.print(f"[green]ok[/] {recipe}")


@recipe_app.command("show", help="Print the resolved recipe (defaults filled in, overrides applied).\n\n"
                                 "Example: dmdr recipe show recipes/sd35-large/4step-refl.yaml rl.weight=0.2")
@user_errors
def recipe_show(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg):
    from .recipe import load_recipe, to_yaml

    sys.stdout.write(to_yaml(load_recipe(recipe, list(overrides or []))))


@recipe_app.command("reference", help="Print the recipe reference (every key, type, default and help) as markdown.\n\n"
                                      "Example: dmdr recipe reference > docs/recipe-reference.md")
def recipe_reference():
    from .recipe.reference import reference_markdown

    sys.stdout.write(reference_markdown())


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    diffusers = "diffusers"
    lora = "lora"
    comfyui = "comfyui"


class ExportDtype(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


@app.command(
    "export",
    help="Export a trained student for diffusers or ComfyUI, with a README.md model card giving the exact sampling "
         "call.\n\n"
         "Formats: safetensors (the denoiser's weights, one file), diffusers (a pipeline folder with a scheduler that "
         "reproduces the student's sampler), lora (diffusers LoRA, for LoRA generators), comfyui (kohya-layout LoRA, "
         "sdxl and sd3).\n\n"
         "Examples:\n\n"
         "  dmdr export runs/sdxl-4step --format diffusers --out exports/sdxl-4step\n\n"
         "  dmdr export runs/sd3m/checkpoints/latest --format comfyui --out exports/sd3m-comfyui\n\n"
         "  dmdr export runs/sd3m/checkpoints/step-004000 --format safetensors --dtype bf16 --out exports/sd3m",
)
@user_errors
def export(
    checkpoint: str = typer.Argument(..., help="A run folder, a checkpoint folder, or RUN/checkpoints/latest.",
                                     show_default=False),
    fmt: ExportFormat = typer.Option(..., "--format", "-f", help="What to write.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create (refused if it exists and is not empty).",
                             show_default=False),
    dtype: ExportDtype = typer.Option(ExportDtype.fp16, "--dtype", help="dtype of the written weights."),
    merge_lora: Optional[bool] = typer.Option(
        None, "--merge-lora/--no-merge-lora", show_default=False,
        help="LoRA generators: merge into the denoiser (default for safetensors and diffusers) or keep the adapter "
             "(safetensors only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    copy_components: Optional[bool] = typer.Option(
        None, "--copy-components/--reference-components", show_default=False,
        help="diffusers format: copy the teacher's unchanged components into the folder (default), or write only "
             "the denoiser and scheduler and load the rest from the teacher (see the model card)."),
):
    from .engines.export import run_export

    run_export(checkpoint, fmt=fmt.value, out=out, dtype=dtype.value, merge_lora=merge_lora, overwrite=overwrite,
               copy_components=copy_components, console=console)


world_app = typer.Typer(help="The built-in shapes world: train its teacher and its world-clip reward on a CPU.",
                        no_args_is_help=True)
app.add_typer(world_app, name="world")


@world_app.command(
    "teacher",
    help="Train the shapes world's teacher (pixel-space UNet + CLIP text encoder, from rendered scenes) and export "
         "it as a StableDiffusionPipeline folder to model.pretrained, with train_log.jsonl and recipe.yaml. "
         "Checkpoints go to output.dir; each is exported too.\n\n"
         "Examples:\n\n"
         "  dmdr world teacher recipes/world/teacher.yaml\n\n"
         "  nohup dmdr world teacher recipes/world/teacher.yaml > teacher.log 2>&1 &\n\n"
         "  dmdr world teacher recipes/world/teacher.yaml --resume latest\n\n"
         "  dmdr world teacher recipes/world/teacher.yaml world.teacher.steps=20 model.pretrained=/tmp/t -o /tmp/t-run",
)
@user_errors
def world_teacher(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue: 'latest' or a checkpoint folder."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoint folder (overrides output.dir)."),
):
    from .recipe import load_recipe

    items = list(overrides or []) + ([f"output.dir={output}"] if output is not None else [])
    cfg = load_recipe(recipe, items)
    from .world.teacher import train_teacher

    train_teacher(cfg, resume=resume, console=console)


@world_app.command(
    "reward",
    help="Train world-clip, the shapes world's CLIP-like reward (InfoNCE on rendered scenes and their prompts), and "
         "write it to world.reward.out with a blind-spot report (probe.json).\n\n"
         "Examples:\n\n"
         "  dmdr world reward recipes/world/reward.yaml\n\n"
         "  dmdr world reward recipes/world/reward.yaml world.reward.steps=50 world.reward.out=/tmp/world-clip",
)
@user_errors
def world_reward(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg):
    from .recipe import load_recipe

    cfg = load_recipe(recipe, list(overrides or []))
    from .world.reward_train import train_reward

    train_reward(cfg, console=console)


def main():
    app()


if __name__ == "__main__":
    main()
