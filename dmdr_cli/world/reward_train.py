"""`dmdr world reward`: train world-clip contrastively on rendered scenes, then measure its blind spots.

Each step renders a fresh batch of (image, prompt) pairs (world_batch, as for the teacher) and
minimises the symmetric InfoNCE loss over the batch. World prompts repeat a lot (243 distinct
GenEval-style prompts at 24 px), so a batch often holds several images of one prompt: the loss is
taken over the batch's distinct prompts, and an image of a prompt is never a negative for it.

Images are lightly degraded during training (a random share of a 3x3 blur plus Gaussian noise), since
the reward will judge model samples, which are never as crisp as renders.

`null_fraction` > 0 adds canvases that show nothing a prompt asks for (the bare background, or one speck
of 1-3 px) to every batch as negatives of every prompt (text -> image direction only: they have no prompt
of their own). Without them world-clip never sees an empty canvas and pays for one about as much as for
the object (docs/results.md, "Training longer"): a student can then drop its objects without losing reward.

The folder written to `world.reward.out` holds config.json (with the default hinge margin),
model.safetensors, tokenizer/, probe.json (blind spots, reward_probe.py), train_log.jsonl and recipe.yaml.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from ..errors import DmdrError
from ..runtime.files import check_output_dir, refuse_file, cleanup_on_failure
from ..recipe import to_yaml
from ..runtime.monitor import MetricsLog, StepProgress
from .builtin_prompts import VAL_SEED
from .prompts import generate_prompts, render_for
from .reward_model import WorldClip, WorldClipConfig
from .reward_probe import probe_all
from .batches import dense_pool, derived_seed, torch_threads, world_batch
from .scene import BACKGROUND, PALETTE, check_size

MARGIN_PERCENTILE = 90
MAX_BLUR_SHARE, MAX_NOISE = 0.7, 0.08  # noise std in [0, 1] pixel units


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[0, 1] images mixed with their 3x3 box blur (random share per image) plus Gaussian noise."""
    batch = images.shape[0]
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    share = MAX_BLUR_SHARE * torch.rand(batch, 1, 1, 1, generator=generator)
    noise = MAX_NOISE * torch.rand(batch, 1, 1, 1, generator=generator)
    mixed = (1 - share) * images + share * blurred
    return (mixed + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def null_canvases(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """n images in [-1, 1] that show nothing a prompt asks for: the background, half of them with one speck
    (a palette colour, 1-3 px square, anywhere)."""
    images = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1).repeat(n, 1, size, size)
    colors = torch.tensor(list(PALETTE.values()), dtype=torch.float32)
    for i in range(n):
        if torch.rand((), generator=generator) < 0.5:
            side = int(torch.randint(1, 4, (), generator=generator))
            y, x = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
            images[i, :, y:y + side, x:x + side] = colors[int(torch.randint(len(colors), (), generator=generator))].view(3, 1, 1)
    return images / 127.5 - 1


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, prompt_index: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with distinct prompts: image i's positive is text prompt_index[i]; a text's
    positives are all the images of its prompt (their probabilities summed). Images past len(prompt_index)
    are null canvases: negatives of every text, in the text -> image direction only."""
    logits = logit_scale.exp().clamp(max=100) * F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    paired = len(prompt_index)
    image_to_text = F.cross_entropy(logits[:paired], prompt_index)
    positives = F.one_hot(prompt_index, text_embeds.shape[0]).T.bool()  # (texts, paired images)
    positives = F.pad(positives, (0, logits.shape[0] - paired))  # a null canvas is no text's positive
    log_probs = logits.T.log_softmax(dim=1).masked_fill(~positives, -math.inf)
    text_to_image = -log_probs.logsumexp(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def train_reward(recipe, console: Console | None = None) -> Path:
    console = console or Console()
    cfg = recipe.world.reward
    size = check_size(recipe.model.resolution)
    out = Path(cfg.out)
    refuse_file(out, "world.reward.out", fix="choose another world.reward.out")
    if out.exists() and any(out.iterdir()) and not (out / "train_log.jsonl").is_file():
        raise DmdrError(f"world.reward.out: {out} holds something other than a world-clip reward (no "
                        f"train_log.jsonl), and the reward is written there: choose an empty or new folder")
    # the folder is built beside `out` and renamed into place: its parent must be creatable and writable
    check_output_dir(out.parent, f"world.reward.out {out}: its folder", fix="choose another world.reward.out")
    config = WorldClipConfig(resolution=size, image_channels=list(cfg.image_channels), embed_dim=cfg.embed_dim,
                             text_width=cfg.text_width, text_layers=cfg.text_layers, text_heads=cfg.text_heads,
                             max_tokens=cfg.max_tokens)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    # a failed write (disk full) is one line, and the half-built folder goes with it
    with cleanup_on_failure(partial, what="world.reward.out", target=out), torch_threads(cfg.threads):
        model = WorldClip(config, seed=cfg.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        dense_items = dense_pool(size, cfg.dense_fraction)
        shutil.rmtree(partial, ignore_errors=True)
        log = MetricsLog(partial / "train_log.jsonl")
        console.print(f"[bold]world-clip[/] {size} px, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
                      f"params, {cfg.steps} steps at batch {cfg.batch_size} -> {out}")
        model.train()
        window: list[float] = []
        with StepProgress(cfg.steps, 0, console, True, "world-clip") as progress:
            for step in range(cfg.steps):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
                images, prompts = world_batch(step, cfg.batch_size, cfg.seed, size, cfg.dense_fraction, dense_items)
                generator = torch.Generator().manual_seed(derived_seed(cfg.seed, step, 3))
                n_null = round(cfg.batch_size * cfg.null_fraction)
                if n_null:
                    images = torch.cat([images, null_canvases(n_null, size, generator)])
                pixels = degrade((images + 1) / 2, generator) * 2 - 1
                distinct = list(dict.fromkeys(prompts))
                prompt_index = torch.tensor([distinct.index(p) for p in prompts])
                loss = contrastive_loss(model.encode_images(pixels), model.encode_texts(distinct), prompt_index,
                                        model.logit_scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                window.append(loss.item())
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    values = {"loss": float(np.mean(window)), "temperature": float(1 / model.logit_scale.detach().exp())}
                    log.write(done, values)
                    progress.update(done, values)
                    window.clear()
        log.close()
        shutil.rmtree(partial / "tensorboard", ignore_errors=True)  # the JSONL log ships; event files do not
        model.eval()
        model.config.default_margin = default_margin(model, size, seed=VAL_SEED)
        model.save(partial)
        (partial / "recipe.yaml").write_text(to_yaml(recipe))
        if cfg.probe_prompts:
            probes = probe_all(_score_matrix(model), cfg.probe_prompts, size, seed=VAL_SEED)
            probes["null_canvas"] = null_probe(model, cfg.probe_prompts, size, seed=VAL_SEED)
            (partial / "probe.json").write_text(json.dumps(probes, indent=1) + "\n")
            _print_probes(probes, model.config.default_margin, console)
        _replace(partial, out)
    console.print(f"[green]world-clip written to {out}[/]")
    return out


@torch.no_grad()
def default_margin(model: WorldClip, size: int, seed: int, n: int = 512) -> float:
    """The MARGIN_PERCENTILE-th percentile of the cosine of clean renders with their own prompts, rounded
    up to 0.01: samples from a model score lower, so a hinge at this margin is active for most of them."""
    metadata = generate_prompts(n, seed=seed, size=size)
    rng = np.random.default_rng(seed)
    images = np.stack([render_for(m, rng, size)[0] for m in metadata])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    scores = model.paired_cosine(pixels, [m["prompt"] for m in metadata]).numpy()
    return math.ceil(float(np.percentile(scores, MARGIN_PERCENTILE)) * 100) / 100


@torch.no_grad()
def null_probe(model: WorldClip, n: int, size: int, seed: int) -> dict:
    """How often a held-out prompt's clean render outscores two null canvases (the bare background and a
    speck) for that prompt, over n single-object prompts: 1.0 when the reward never pays more for showing
    nothing, 1/3 by chance."""
    metadata = generate_prompts(n, seed=seed, size=size, tasks=["single_object"])
    rng = np.random.default_rng(seed)
    renders = torch.from_numpy(np.stack([render_for(m, rng, size)[0] for m in metadata])).permute(0, 3, 1, 2).float()
    renders = renders / 127.5 - 1
    prompts = [m["prompt"] for m in metadata]
    blank = null_canvases(n, size, torch.Generator().manual_seed(seed))  # half of these carry a speck
    scores = torch.stack([model.paired_cosine(images, prompts) for images in (renders, blank, blank.roll(1, 0))])
    return {"accuracy": float((scores.argmax(0) == 0).float().mean()), "chance": 1 / 3, "n": n,
            "render_cosine": float(scores[0].mean()), "null_cosine": float(scores[1:].mean())}


def _score_matrix(model: WorldClip):
    return lambda images, prompts: model.similarity(images * 2 - 1, prompts)


def _print_probes(probes: dict[str, dict], margin: float, console: Console) -> None:
    table = Table(title=f"world-clip blind spots (held-out clean renders); default margin {margin}")
    for name in ("probe", "accuracy", "chance", "n"):
        table.add_column(name)
    for task, result in probes.items():
        table.add_row(task, f"{result['accuracy']:.3f}", f"{result['chance']:.3f}", str(result["n"]))
    console.print(table)


def _replace(partial: Path, out: Path) -> None:
    """Put the finished folder at `out`, replacing an older one only now that the new one is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.with_name(f".{out.name}.previous-{os.getpid()}")
    if out.exists():
        os.rename(out, previous)
    os.rename(partial, out)
    shutil.rmtree(previous, ignore_errors=True)
