"""What a training command is about to do, worked out without loading any weights (`--dry-run`).

Parameter counts come from safetensors headers (a few KB read per file), so the plan is instant even
for SD3.5-Large.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from ..families.shapes import denoiser_shapes, lora_parameter_count, lora_targets, numel
from ..recipe import Recipe, to_yaml


def _prompt_check(spec: str) -> str | None:
    if spec.startswith(("builtin:", "hf:")):  # read and reported by data/prompt_report.py
        return None
    return None if Path(spec).is_file() else f"data.prompts file {spec!r} does not exist (the run would stop before loading weights)"


def plan_rows(cfg: Recipe, stage: str, init: str | None, resume: str | None) -> tuple[list[tuple[str, str]], list[str]]:
    m, s = cfg.model, cfg.student
    rows: list[tuple[str, str]] = []
    warnings: list[str] = []
    local = Path(m.pretrained).exists()
    rows.append(("family", m.family))
    rows.append(("teacher", f"{m.pretrained} ({'local folder' if local else 'hub id'}"
                            f"{', revision ' + m.revision if m.revision else ''}{', variant ' + m.variant if m.variant else ''})"))
    if m.single_file:
        rows.append(("single-file weights", m.single_file))
    times = ", ".join(f"{t:g}" for t in s.timesteps) if s.timesteps else "family default"
    rows.append(("student", f"{s.steps} step(s), times {times}, sampler {s.sampler}, {s.finetune} fine-tune"
                            + (f" (LoRA r{s.lora_rank}, alpha {s.lora_alpha:g})" if s.finetune == "lora" else "")))
    gen_targets, gui_targets = lora_targets(cfg)
    shapes = denoiser_shapes(cfg)
    if shapes is not None:
        base = sum(numel(v) for v in shapes.values())
        gen = base if s.finetune == "full" else lora_parameter_count(shapes, gen_targets, s.lora_rank)
        fake = lora_parameter_count(shapes, gui_targets, cfg.guidance.lora_rank)
        if cfg.guidance.layout == "dmd2":
            fake = base
        rows.append(("trainable parameters", f"generator {gen:,} / fake score {fake:,} (teacher {base:,})"))
    else:
        rows.append(("trainable parameters", "known after loading (weights not on local disk)"))
    layout = ("one teacher copy shared by generator, real and fake (separate LoRA adapters)"
              if cfg.guidance.layout == "shared_lora" and s.finetune == "lora" else
              "generator copy + teacher copy with the guidance LoRA" if cfg.guidance.layout == "shared_lora" else
              "DMD2 layout: generator, teacher and a full fake-score copy")
    rows.append(("network layout", layout))
    total = cfg.coldstart.steps if stage == "coldstart" else cfg.train.steps
    stages = []
    if cfg.coldstart.steps:
        dg = f"DynaDG s_r0={cfg.coldstart.dynadg.scale:g} over {cfg.coldstart.dynadg.steps}" if cfg.coldstart.dynadg.enabled else "no DynaDG"
        rs = f"DynaRS over {cfg.coldstart.dynars.steps}" if cfg.coldstart.dynars.enabled else "uniform renoise"
        stages.append(f"cold start 0 -> {cfg.coldstart.steps} ({dg}, {rs})")
    if stage == "distill" and total > cfg.coldstart.steps:
        rl = cfg.rl.algorithm
        stages.append(f"DMD{' + ' + rl.upper() if rl != 'none' else ''} {cfg.coldstart.steps} -> {total}"
                      + (f" (RL from step {cfg.rl_start})" if rl != "none" else ""))
    if stage == "coldstart" and not cfg.coldstart.steps:
        warnings.append("coldstart.steps is 0: `dmdr coldstart` has nothing to do (set coldstart.steps)")
    rows.append(("stages", "; ".join(stages) or "none"))
    rows.append(("generator steps", f"{total} ({total * cfg.dmd.fake_updates_per_generator_update} fake-score updates), "
                                    f"batch {cfg.train.batch_size} per process x {cfg.train.gradient_accumulation} accumulation"))
    if cfg.rl.algorithm != "none":
        rows.append(("rewards", ", ".join(f"{r.name} x{r.weight:g}" for r in cfg.rl.rewards)))
    if init:
        rows.append(("init", init))
    if resume:
        rows.append(("resume", resume))
    out = Path(cfg.output.dir)
    rows.append(("outputs", f"{out}/ recipe.yaml, log.jsonl, samples/*.png, checkpoints/step-*/"))
    for w in [_prompt_check(cfg.data.prompts)] + [_reward_check(r) for r in cfg.rl.rewards]:
        if w:
            warnings.append(w)
    return rows, warnings


def _reward_check(spec) -> str | None:
    p = spec.path
    if p and (p.startswith(("./", "/", "rewards/")) or p.endswith((".pt", ".pth", ".safetensors"))) and not Path(p).exists():
        return f"reward {spec.name}: weights {p!r} not found (the run would stop before training)"
    return None


def print_plan(cfg: Recipe, stage: str, init: str | None, resume: str | None, console: Console,
               processes: int | None = None, gpu_memory: float | None = None, memory: bool = True) -> None:
    """The resolved recipe, the plan, and (`memory`) the memory plan: estimated peak GiB per GPU at `processes`
    (default: the launched world size), with and without sharding, and whether it fits `gpu_memory` (without it:
    24, 40 and 80 GB cards)."""
    from .memory import GiB, launched_processes, memory_report

    console.rule(f"dmdr {stage}: resolved recipe")
    console.print(Syntax(to_yaml(cfg), "yaml", theme="ansi_dark", background_color="default"))
    rows, warnings = plan_rows(cfg, stage, init, resume)
    table = Table(title=f"plan ({stage})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if not memory:
        for w in warnings:
            console.print(f"[yellow]warning:[/] {w}")
        return
    n = processes or launched_processes()
    with console.status("memory plan: tracing a training step on fake tensors"):
        report = memory_report(cfg, n, gpu_memory)
    if report is None or isinstance(report, str):
        console.print(report or "memory plan: needs the pipeline's configs (a local folder) or a known hub id")
    else:
        head, plans, lines, mem_warnings = report
        mem = Table(title=f"memory per GPU at {n} process(es) by train.sharding, GiB ({head})", title_justify="left")
        mem.add_column("term", style="bold")
        for name in plans:  # short headers: four columns fit 80 characters unwrapped
            mem.add_column(name + (" (recipe)" if name == cfg.train.sharding else ""), justify="right")
        for term in {term: None for plan in plans.values() for term in plan.terms}:  # a term some sharding adds
            mem.add_row(term, *(f"{plan.terms[term] / GiB:.1f}" if term in plan.terms else "-"
                                for plan in plans.values()))
        if any(plan.encoding > plan.total for plan in plans.values()):  # before training: the prompts' encoding
            mem.add_row("prompt encoding (before it)",
                        *(f"{plan.encoding / GiB:.1f}" for plan in plans.values()))
        mem.add_row("estimated peak", *(f"{plan.peak / GiB:.1f}" for plan in plans.values()), style="bold")
        console.print(mem)
        for line in lines:
            console.print(line)
        warnings += mem_warnings
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
