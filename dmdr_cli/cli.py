"""The `dmdr` command line. Heavy imports (torch, diffusers) happen inside the commands so `--help` is instant.

Every command turns a `DmdrError` into one red line and exit code 2; set DMDR_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional, Tuple

import typer
from rich.console import Console
from rich.markup import escape

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
            _check_int_options(kwargs)
            return fn(*args, **kwargs)
        except DmdrError as e:
            if os.environ.get("DMDR_DEBUG") == "1":
                raise
            # escaped: a message naming an extra, 'dmdr[wandb]', is text, not rich markup
            err_console.print(f"[bold red]error:[/] {escape(e.message)}", markup=True, highlight=False)
            raise typer.Exit(e.exit_code) from None

    return wrapper


INT64 = 2**63


def _check_int_options(options: dict) -> None:
    """Every integer option fits 64 bits (torch seeds, sizes and counts are int64): one line, not an overflow."""
    for name, value in options.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and not -INT64 <= v < INT64:
                raise DmdrError(f"--{name.replace('_', '-')} {v} does not fit in 64 bits: give a number below 2^63")


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
        allow_recipe_change: bool = typer.Option(
            False, "--allow-recipe-change",
            help="--resume with a changed student.steps, train.seed, batch size (keys that break exact resume): "
                 "continue anyway and record the change in the run log."),
        processes: Optional[int] = typer.Option(
            None, "--processes", min=1, max=4096,
            help="Processes (GPUs) the memory plan assumes; default: the launched world size (WORLD_SIZE)."),
        gpu_memory: Optional[float] = typer.Option(
            None, "--gpu-memory", min=1, max=4096,
            help="GiB per GPU: the plan says whether the estimate fits and which knobs would make it fit."),
        memory: bool = typer.Option(
            True, "--memory/--no-memory",
            help="With --dry-run: the memory plan, from one training step traced on fake tensors (about 30 s for "
                 "SDXL on a CPU)."),
    ):
        from .recipe import load_recipe

        items = list(overrides or [])
        if output is not None:
            items.append(f"output.dir={output}")
        cfg = load_recipe(recipe, items)
        from .engines.plan import print_plan

        print_plan(cfg, stage=stage, init=init, resume=resume, console=console, processes=processes,
                   gpu_memory=gpu_memory, memory=dry_run and memory)
        if dry_run:
            from .data.prompt_report import print_prompt_report

            print_prompt_report(cfg, console)
            return
        from .engines.train import run_training

        run_training(cfg, stage=stage, init=init, resume=resume, console=console,
                     allow_recipe_change=allow_recipe_change)

    return command


app.command(
    "distill",
    help="Train the few-step student: DMD (+ the RL branch from rl.start_step). With coldstart.steps > 0 the "
         "cold start runs first in the same call.\n\n"
         "Examples:\n\n"
         "  dmdr distill recipes/world/dmdr.yaml\n\n"
         "  dmdr distill recipes/sd3-medium/4step-refl.yaml --init runs/sd3m-cold/checkpoints/latest\n\n"
         "  dmdr distill recipe.yaml train.steps=100 train.batch_size=2 --dry-run\n\n"
         "  dmdr distill recipes/sdxl/4step-refl.yaml --dry-run --processes 8 --gpu-memory 80\n\n"
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
    from .recipe.reference import reference_document

    sys.stdout.write(reference_document())


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    diffusers = "diffusers"
    lora = "lora"
    comfyui = "comfyui"
    single_file = "single-file"


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
         "sdxl and sd3; full or merged weights: a single-file checkpoint), single-file (the whole pipeline in the "
         "original checkpoint layout, for AUTOMATIC1111 / Forge / ComfyUI's Load Checkpoint; --denoiser-only: the "
         "UNet / MMDiT alone, for ComfyUI's Load Diffusion Model).\n\n"
         "Examples:\n\n"
         "  dmdr export runs/sdxl-4step --format diffusers --out exports/sdxl-4step\n\n"
         "  dmdr export runs/sdxl-4step --format single-file --out exports/sdxl-4step-checkpoint\n\n"
         "  dmdr export runs/sd3m/checkpoints/latest --format comfyui --out exports/sd3m-comfyui\n\n"
         "  dmdr export runs/sd3m/checkpoints/step-004000 --format safetensors --dtype bf16 --out exports/sd3m\n\n"
         "  dmdr export runs/sdxl-4step --format lora --out exports/sdxl-4step --push-to-hub you/sdxl-4step-dmdr",
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
        help="LoRA generators: merge into the denoiser (default for safetensors, diffusers and single-file; "
             "comfyui: a merged single-file checkpoint instead of the LoRA) or keep the adapter (safetensors)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    copy_components: Optional[bool] = typer.Option(
        None, "--copy-components/--reference-components", show_default=False,
        help="diffusers format: copy the teacher's unchanged components into the folder (default), or write only "
             "the denoiser and scheduler and load the rest from the teacher (see the model card)."),
    denoiser_only: bool = typer.Option(
        False, "--denoiser-only",
        help="single-file checkpoints: the UNet / MMDiT alone in the original layout (ComfyUI's Load Diffusion "
             "Model), the text encoders and VAE left to the base model."),
    push_to_hub: Optional[str] = typer.Option(
        None, "--push-to-hub", show_default=False,
        help="Then upload the export to this Hugging Face model repo (NAMESPACE/NAME; created if needed) in one "
             "commit, with the token of `hf auth login` or HF_TOKEN."),
    private: bool = typer.Option(False, "--private", help="Create the --push-to-hub repo as private."),
):
    from .engines.export import run_export

    run_export(checkpoint, fmt=fmt.value, out=out, dtype=dtype.value, merge_lora=merge_lora, overwrite=overwrite,
               copy_components=copy_components, denoiser_only=denoiser_only, push_to_hub=push_to_hub, private=private,
               console=console)


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



class SampleBench(str, Enum):
    geneval = "geneval"
    dpg = "dpg"


ModelArg = typer.Argument(
    ..., show_default=False,
    help="A run folder, a checkpoint folder, or a teacher: teacher:<family>:<path or hub id> (bare: CFG 7, "
         "unconditional \"\") or teacher:RUN_OR_RECIPE (the run's teacher with its recipe's CFG and unconditional "
         "input).")
# Non-official on purpose: the published GenEval prompts say "two sheeps", "three persons".
GenevalEnglishPlurals = typer.Option(
    False, "--geneval-english-plurals",
    help="NON-OFFICIAL: word the generated GenEval prompts with English plurals (\"two sheep\", \"three people\") "
         "instead of the official texts (\"two sheeps\", \"three persons\"); numbers are then not comparable with "
         "published GenEval.")


DomainOption = typer.Option(
    None, "--domain", show_default=False,
    help="Whose benches judge the model: official (GenEval, DPG-Bench, score models) or an evaluation domain "
         "(world: the shapes world's own prompts and exact detector); default: detected from the model.")


def _sample_options(**values):
    from .engines.sample import SampleOptions

    return SampleOptions(**values)


@app.command(
    "sample",
    help="Draw images from a student (its own times and sampler, no CFG) or a teacher (its own scheduler, CFG), for "
         "prompts or a benchmark, in the folder layout the benchmark's evaluator expects. Resumable: images already "
         "in --out are kept; image i of prompt p depends only on (--seed, p, i), never on --batch.\n\n"
         "Writes PNGs, samples.jsonl (file, prompt, seed, steps, nfe, model per image) and sample_settings.json; "
         "--bench geneval: 00000/metadata.jsonl + 00000/samples/0000.png; --bench dpg: <item_id>.png 2x2 grids. "
         "Shapes-world models (or --domain world) use the world's own GenEval and dense prompts.\n\n"
         "Examples:\n\n"
         "  dmdr sample runs/sdxl-4step --prompts prompts.txt --out samples/sdxl-4step --grid\n\n"
         "  dmdr sample teacher:sd3:stabilityai/stable-diffusion-3-medium-diffusers --bench geneval "
         "--geneval-metadata evaluation_metadata.jsonl --out samples/sd3-teacher\n\n"
         "  dmdr sample runs/sd3m/checkpoints/step-004000 --bench dpg --dpg-csv dpg_bench.csv "
         "--out samples/sd3m-dpg\n\n"
         "  dmdr sample teacher:runs/world-dmdr --bench geneval --out samples/world-teacher --batch 64\n\n"
         "  accelerate launch --num_processes 8 -m dmdr_cli sample runs/sdxl-4step --bench geneval --out samples/g",
)
@user_errors
def sample(
    model: str = ModelArg,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the images (an existing one with the same settings "
                                                      "is resumed).", show_default=False),
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable).",
                                               show_default=False),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="A text file, one prompt per line, or builtin:NAME.",
                                          show_default=False),
    bench: Optional[SampleBench] = typer.Option(None, "--bench", help="Write a benchmark's image set.",
                                                show_default=False),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps (default: the student's own; "
                                                                     "teachers 25).", show_default=False),
    cfg: Optional[float] = typer.Option(None, "--cfg", min=1.0, help="Teacher CFG scale (default 7, or the recipe's); "
                                                                     "students take none.", show_default=False),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Base seed (default: the recipe's sample.seed, 0).",
                                       show_default=False),
    per_prompt: Optional[int] = typer.Option(None, "--per-prompt", min=1, help="Images per prompt (default 1; "
                                                                              "GenEval 4).", show_default=False),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Images per forward pass (default: the recipe's "
                                                                     "sample.batch_size, 4).", show_default=False),
    height: Optional[int] = typer.Option(None, "--height", min=8, help="Image height (default: the model's).",
                                         show_default=False),
    width: Optional[int] = typer.Option(None, "--width", min=8, help="Image width (default: the model's).",
                                        show_default=False),
    grid: bool = typer.Option(False, "--grid", help="Also write grid.png (the first prompts, one row each)."),
    dpg_csv: Optional[Path] = typer.Option(None, "--dpg-csv", help="DPG-Bench's dpg_bench.csv (--bench dpg).",
                                           show_default=False),
    geneval_metadata: Optional[Path] = typer.Option(
        None, "--geneval-metadata", show_default=False,
        help="GenEval's official evaluation_metadata.jsonl (default: prompts generated by GenEval's procedure)."),
    geneval_english_plurals: bool = GenevalEnglishPlurals,
    domain: Optional[str] = DomainOption,
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", min=1, show_default=False,
                                              help="Only the first N prompts of the set (quick runs)."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: accelerate's choice).",
                                         show_default=False),
):
    from .engines.sample import read_prompt_options, run_sample

    options = _sample_options(steps=steps, cfg=cfg, seed=seed, per_prompt=per_prompt, batch=batch, height=height,
                              width=width, grid=grid, domain=domain, num_prompts=num_prompts,
                              geneval_metadata=geneval_metadata, geneval_english_plurals=geneval_english_plurals,
                              dpg_csv=dpg_csv, device=device)
    run_sample(model, out, prompts=read_prompt_options(prompt, prompts), bench=bench.value if bench else None,
               options=options, console=console)



@app.command(
    "evaluate",
    help="Score a model or a folder of samples, as the published protocols do, into a report folder: report.json "
         "(every number and which prompts, detector, VQA and weights made it), report.md (a paper-style table), a "
         "per-task chart and sample grids.\n\n"
         "Benchmarks (--bench, comma-separated): scores (CLIP, Aesthetic, PickScore, HPS v2.1: means with 95% "
         "bootstrap CIs over prompts, no prompt prefixes), geneval (Mask2Former + CLIP colours; official metadata "
         "with --geneval-metadata, else GenEval's procedure), dpg (--dpg-csv and --vqa-model). For shapes-world "
         "models: geneval and dpg use the world's prompts and exact detector, and world-distance is a Fréchet "
         "distance to real renders.\n\n"
         "With --model the images are drawn first (as `dmdr sample` would) into REPORT/samples/; with --images an "
         "existing folder is scored. --compare makes a side-by-side report of two reports or image folders, with "
         "paired B - A 95% bootstrap intervals (1000 seeded resamples) over the prompts, dense items and images "
         "both reports hold.\n\n"
         "Examples:\n\n"
         "  dmdr evaluate --model runs/sdxl-4step --bench scores,geneval --prompts prompts.txt --report reports/s4 "
         "--hps-weights HPS_v2.1_compressed.pt --clip-weights open_clip_pytorch_model.bin\n\n"
         "  dmdr evaluate --model teacher:sdxl:stabilityai/stable-diffusion-xl-base-1.0 --bench geneval "
         "--geneval-metadata evaluation_metadata.jsonl --report reports/sdxl-teacher\n\n"
         "  dmdr evaluate --images samples/sd3m-dpg --bench dpg --dpg-csv dpg_bench.csv --vqa-model models/vqa\n\n"
         "  dmdr evaluate --model runs/world-dmdr --bench geneval,dpg,world-distance --report reports/world\n\n"
         "  dmdr evaluate --compare reports/sdxl-teacher reports/s4 --report reports/teacher-vs-student",
)
@user_errors
def evaluate(
    model: Optional[str] = typer.Option(None, "--model", "-m", show_default=False,
                                        help="Sample this model first: run, checkpoint or teacher:<family>:<path>."),
    images: Optional[Path] = typer.Option(None, "--images", help="Score this folder of samples instead.",
                                          show_default=False),
    compare: Optional[Tuple[Path, Path]] = typer.Option(
        None, "--compare", show_default=False,
        help="Two report folders or image folders (teacher first): a side-by-side report with paired "
             "B - A intervals."),
    bench: Optional[str] = typer.Option(None, "--bench", "-b", show_default=False,
                                        help="scores, geneval, dpg, world-distance; comma-separated (default scores)."),
    metrics: str = typer.Option("clip,aesthetic,pick,hps", "--metrics",
                                help="Scores of --bench scores (any registered reward name works too, e.g. "
                                     "world-clip)."),
    report: Optional[Path] = typer.Option(None, "--report", "-o", show_default=False,
                                          help="Report folder (default reports/<model or folder name>)."),
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", show_default=False,
                                               help="--bench scores with --model: a prompt (repeatable)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", show_default=False,
                                          help="--bench scores with --model: a prompt file or builtin:NAME."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, show_default=False, help="Sampling steps."),
    cfg: Optional[float] = typer.Option(None, "--cfg", min=1.0, show_default=False, help="Teacher CFG scale."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, show_default=False, help="Sampling seed."),
    per_prompt: Optional[int] = typer.Option(None, "--per-prompt", min=1, show_default=False,
                                             help="Images per prompt for --bench scores / geneval."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, show_default=False, help="Sampling batch size."),
    height: Optional[int] = typer.Option(None, "--height", min=8, show_default=False, help="Image height."),
    width: Optional[int] = typer.Option(None, "--width", min=8, show_default=False, help="Image width."),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", min=1, show_default=False,
                                              help="Only the first N prompts of each set (quick runs)."),
    domain: Optional[str] = DomainOption,
    device: Optional[str] = typer.Option(None, "--device", show_default=False, help="cuda, cuda:1 or cpu."),
    score_batch: int = typer.Option(16, "--score-batch", min=1, help="Images per scoring batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, show_default=False,
                                          help="PNG decoding processes for scoring (default 8 on GPU, 0 on CPU)."),
    clip_weights: Optional[str] = typer.Option(None, "--clip-weights", show_default=False,
                                               help="CLIP score weights (file, folder or hub id; default DFN5B "
                                                    "ViT-H-14 from the hub cache)."),
    aesthetic_weights: Optional[str] = typer.Option(None, "--aesthetic-weights", show_default=False,
                                                    help="sac+logos+ava1-l14-linearMSE.pth (its CLIP: "
                                                         "--score-option aesthetic.clip_path=...)."),
    pick_weights: Optional[str] = typer.Option(None, "--pick-weights", show_default=False,
                                               help="PickScore_v1 folder or hub id."),
    hps_weights: Optional[str] = typer.Option(None, "--hps-weights", show_default=False,
                                              help="HPS_v2.1_compressed.pt (file, folder or hub id)."),
    score_option: Optional[List[str]] = typer.Option(
        None, "--score-option", show_default=False,
        help="METRIC.KEY=VALUE for a score model, e.g. clip.arch=ViT-L-14 clip.pretrained=openai (torchmetrics' "
             "convention), hps.version=v2.0, pick.processor=PATH (repeatable)."),
    geneval_metadata: Optional[Path] = typer.Option(None, "--geneval-metadata", show_default=False,
                                                    help="GenEval's official evaluation_metadata.jsonl (default: "
                                                         "GenEval's procedure, seed 43, official wording)."),
    geneval_english_plurals: bool = GenevalEnglishPlurals,
    detector: Optional[str] = typer.Option(None, "--detector", show_default=False,
                                           help="Mask2Former COCO-instance folder (default: "
                                                "facebook/mask2former-swin-small-coco-instance from the hub cache)."),
    color_clip: Optional[str] = typer.Option(None, "--color-clip", show_default=False,
                                             help="OpenAI CLIP ViT-L/14 open_clip weights for GenEval's colours."),
    dpg_csv: Optional[Path] = typer.Option(None, "--dpg-csv", show_default=False, help="DPG-Bench's dpg_bench.csv."),
    vqa_model: Optional[str] = typer.Option(None, "--vqa-model", show_default=False,
                                            help="DPG-Bench VQA: an image-text-to-text transformers folder, or "
                                                 "module:function answering (image, question) -> str."),
    dpg_all_rows: bool = typer.Option(
        False, "--dpg-all-rows",
        help="NON-OFFICIAL: DPG-Bench asks the CSV's first row too, which the official compute_dpg_bench.py skips "
             "(published numbers are on 1,064 prompts); not comparable with published DPG-Bench."),
    dpg_lenient_yes: bool = typer.Option(
        False, "--dpg-lenient-yes",
        help="NON-OFFICIAL: DPG-Bench counts \"Yes.\", \" YES \" as yes (the official script: exactly \"yes\"), "
             "for chat-style VQA models; not comparable with published DPG-Bench."),
):
    from .engines.evaluate import EvaluateOptions, parse_benches, run_compare, run_evaluate
    from .engines.sample import read_prompt_options
    from .evaluate.scores import parse_score_options

    sample_options = _sample_options(steps=steps, cfg=cfg, seed=seed, per_prompt=per_prompt, batch=batch,
                                     height=height, width=width, domain=domain, num_prompts=num_prompts,
                                     geneval_metadata=geneval_metadata,
                                     geneval_english_plurals=geneval_english_plurals, dpg_csv=dpg_csv, device=device)
    options = EvaluateOptions(
        benches=parse_benches(bench), metrics=metrics, prompts=read_prompt_options(prompt, prompts),
        weights={"clip": clip_weights, "aesthetic": aesthetic_weights, "pick": pick_weights, "hps": hps_weights},
        score_options=parse_score_options(score_option), geneval_metadata=geneval_metadata, detector=detector,
        color_clip=color_clip, dpg_csv=dpg_csv, vqa_model=vqa_model, dpg_all_rows=dpg_all_rows,
        dpg_lenient_yes=dpg_lenient_yes, domain=domain,
        batch=score_batch, workers=workers, sample=sample_options)
    if compare is not None:
        if model is not None or images is not None:
            raise DmdrError("--compare takes two report or image folders: drop --model / --images")
        run_compare(compare[0], compare[1], report, options=options, evaluate_images=bench is not None,
                    console=console)
        return
    run_evaluate(model=model, images=images, report_dir=report, options=options, console=console)


def main():
    app()


if __name__ == "__main__":
    main()
