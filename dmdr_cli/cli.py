"""The `dmdr` command line. Heavy imports (torch, diffusers) happen inside the commands so `--help` is instant.

Every command turns a `DmdrError` into one red line and exit code 2; set DMDR_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
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


def main():
    app()


if __name__ == "__main__":
    main()
