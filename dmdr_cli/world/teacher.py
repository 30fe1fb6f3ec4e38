"""`dmdr world teacher`: train the shapes world's teacher from rendered scenes and export it as an SD pipeline.

The loop is standard eps-prediction denoising: a fresh batch of rendered (image, prompt) pairs every
step (GenEval-style prompts in GenEval's task proportions, plus a share of dense prompts), uniform
timesteps, MSE between the predicted and the true noise with Min-SNR weighting (it stops the nearly
clean timesteps, whose eps is hardest to read and least useful, from dominating the gradient), and
10% of the prompts replaced by "" so classifier-free guidance has an unconditional score to use. The
text encoder has no pretrained weights to start from, so it trains with the UNet.

Everything random is keyed by (seed, step): the batch, the timesteps, the noise and the prompt
dropout. A run resumed from a checkpoint (`--resume latest`) therefore takes exactly the steps the
uninterrupted run would have. Checkpoints go to `output.dir`; each one is also exported (EMA weights)
to `model.pretrained`, so a long background run always leaves a usable teacher behind.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ..errors import DmdrError
from ..runtime.files import check_output_dir, refuse_file
from ..recipe import to_yaml
from ..runtime.checkpoint import load_checkpoint, optimizer_from_files, resolve_checkpoint, save_checkpoint
from ..runtime.monitor import MetricsLog, StepProgress
from ..runtime.rundir import RunFolder
from .batches import dense_pool, derived_seed, torch_threads, world_batch
from .scene import check_size
from .teacher_model import alphas_cumprod, build_teacher, save_pipeline

CHECKPOINTS_KEPT = 2


class PromptIds:
    """Token ids per prompt, cached: the world has a few thousand distinct prompts, seen over and over."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[p] for p in prompts])


class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up: the decay is
    min(decay, (1 + n) / (10 + n)) after n updates, so early weights are not averaged in for long."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, source: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, live = list(self.module.parameters()), list(source.parameters())
        torch._foreach_lerp_(ema, live, 1 - decay)


def learning_rate(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.final_lr_fraction at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def denoising_loss(unet, text_encoder, images: torch.Tensor, ids: torch.Tensor, alpha_bar: torch.Tensor,
                   generator: torch.Generator, min_snr_gamma: float) -> torch.Tensor:
    """Eps-prediction MSE at uniform timesteps, weighted by min(SNR, gamma) / SNR when gamma > 0."""
    batch = images.shape[0]
    timesteps = torch.randint(0, len(alpha_bar), (batch,), generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    a = alpha_bar[timesteps].view(-1, 1, 1, 1)
    noisy = a.sqrt() * images + (1 - a).sqrt() * noise
    text = text_encoder(ids).last_hidden_state
    predicted = unet(noisy, timesteps, encoder_hidden_states=text, return_dict=False)[0]
    per_image = (predicted - noise).pow(2).mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        snr = alpha_bar[timesteps] / (1 - alpha_bar[timesteps])
        per_image = per_image * torch.clamp(snr, max=min_snr_gamma) / snr
    return per_image.mean()


def train_step(cfg, step: int, unet, text_encoder, optimizer, images: torch.Tensor, ids: torch.Tensor,
               alpha_bar: torch.Tensor, generator: torch.Generator) -> tuple[float, float]:
    """One AdamW update of UNet and text encoder together; returns (loss, gradient norm before clipping)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    loss = denoising_loss(unet, text_encoder, images, ids, alpha_bar, generator, cfg.min_snr_gamma)
    if not torch.isfinite(loss):
        raise DmdrError(f"the teacher's loss is {loss.item()} at step {step}: lower world.teacher.lr (now {cfg.lr}) "
                        f"and --resume latest")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    optimizer.step()
    return loss.item(), float(grad_norm)


def train_teacher(recipe, *, resume: str | None = None, console: Console | None = None) -> Path:
    """Train (or continue training) the world teacher of `recipe`; returns the exported pipeline folder."""
    console = console or Console()
    cfg = recipe.world.teacher
    size = check_size(recipe.model.resolution)
    if recipe.model.family != "sd":
        raise DmdrError(f"model.family: the world teacher is an sd-family pipeline; set model.family: sd, "
                        f"not {recipe.model.family}")
    export_dir = Path(recipe.model.pretrained)
    refuse_file(export_dir, "model.pretrained (the teacher is written there)", fix="choose another model.pretrained")
    if export_dir.exists() and any(export_dir.iterdir()) and not (export_dir / "train_log.jsonl").is_file():
        raise DmdrError(f"model.pretrained: {export_dir} holds something other than a world teacher (no "
                        f"train_log.jsonl), and the teacher is written there: choose an empty or new folder")
    check_output_dir(export_dir.parent, f"model.pretrained {export_dir}: its folder (the teacher is written there)",
                     fix="choose another model.pretrained")
    run = RunFolder(Path(recipe.output.dir), resume=resume is not None)
    recipe_yaml = to_yaml(recipe)

    with torch_threads(cfg.threads):
        unet, text_encoder, tokenizer = build_teacher(cfg, size)
        optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        ema = [EMA(unet, cfg.ema_decay), EMA(text_encoder, cfg.ema_decay)] if cfg.ema_decay > 0 else None
        start = _restore(resume, run.path, unet, text_encoder, ema, optimizer) if resume else 0

        run.open(recipe_yaml, is_main=True)
        log = MetricsLog(run.path / "train_log.jsonl")
        log.truncate_after(start)
        console.print(f"[bold]world teacher[/] {size} px, UNet {_millions(unet)} + text {_millions(text_encoder)} "
                      f"params, steps {start}..{cfg.steps}, batch {cfg.batch_size}, {torch.get_num_threads()} "
                      f"thread(s); checkpoints in {run.path}, teacher -> {export_dir}")

        alpha_bar = alphas_cumprod(cfg.beta_schedule)
        dense_items = dense_pool(size, cfg.dense_fraction)
        prompt_ids = PromptIds(tokenizer)

        def checkpoint(step: int) -> None:
            tensors = {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict()}
            if ema is not None:
                tensors.update(ema_unet=ema[0].module.state_dict(), ema_text_encoder=ema[1].module.state_dict())
            save_checkpoint(run.path, step, recipe_yaml=recipe_yaml, keep=CHECKPOINTS_KEPT,
                            state={"ema_updates": ema[0].updates if ema else 0}, tensors=tensors,
                            optimizers={"adamw": optimizer})
            exported = (ema[0].module, ema[1].module) if ema else (unet, text_encoder)
            save_pipeline(export_dir, *exported, tokenizer, cfg.beta_schedule,
                          extra_files={"recipe.yaml": recipe_yaml, "train_log.jsonl": _read(log.path)})

        unet.train()
        text_encoder.train()
        window: list[float] = []
        with StepProgress(cfg.steps, start, console, True, "teacher") as progress, run.preemption() as preempt:
            for step in range(start, cfg.steps):
                images, prompts = world_batch(step, cfg.batch_size, cfg.seed, size, cfg.dense_fraction, dense_items)
                generator = torch.Generator().manual_seed(derived_seed(cfg.seed, step, 2))
                dropped = torch.rand(len(prompts), generator=generator) < cfg.prompt_dropout
                prompts = ["" if drop else prompt for prompt, drop in zip(prompts, dropped.tolist())]
                loss, grad_norm = train_step(cfg, step, unet, text_encoder, optimizer, images, prompt_ids(prompts),
                                             alpha_bar, generator)
                if ema is not None:
                    ema[0].update(unet)
                    ema[1].update(text_encoder)
                window.append(loss)

                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps or preempt.requested:
                    values = {"loss": float(np.mean(window)), "grad_norm": grad_norm,
                              "lr": optimizer.param_groups[0]["lr"]}
                    log.write(done, values)
                    progress.update(done, values)
                    window.clear()
                due = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
                if done == cfg.steps or due or preempt.requested:
                    checkpoint(done)
                if preempt.requested and done < cfg.steps:
                    console.print(f"[yellow]stopped by {preempt.signal_name} at step {done}; checkpoint written, "
                                  f"continue with --resume latest[/]")
                    log.close()
                    raise SystemExit(preempt.exit_code)
        if start >= cfg.steps:
            checkpoint(start)  # nothing left to train: re-export the finished run
        log.close()
        run.close()
        console.print(f"[green]teacher written to {export_dir}[/]")
        if cfg.eval_prompts:
            from .teacher_eval import report_teacher_geneval

            report_teacher_geneval(recipe, export_dir, console)
    return export_dir


def _restore(resume: str, run_dir: Path, unet, text_encoder, ema, optimizer) -> int:
    found = load_checkpoint(resolve_checkpoint(resume, run_dir))
    unet.load_state_dict(found["tensors"]["unet"])
    text_encoder.load_state_dict(found["tensors"]["text_encoder"])
    if ema is not None:
        if "ema_unet" not in found["tensors"]:
            raise DmdrError("the checkpoint has no EMA weights but world.teacher.ema_decay > 0: resume with "
                            "world.teacher.ema_decay=0, or start a fresh run")
        ema[0].module.load_state_dict(found["tensors"]["ema_unet"])
        ema[1].module.load_state_dict(found["tensors"]["ema_text_encoder"])
        ema[0].updates = ema[1].updates = int(found["state"]["ema_updates"])
    optimizer_from_files(optimizer, *found["optim"]["adamw"])
    return int(found["state"]["step"])


def _millions(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
