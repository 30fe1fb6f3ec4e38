"""The score table: CLIP, Aesthetic, PickScore and HPS (v2.1 by default) of a folder of samples.

The models are the RL rewards' own (`rewards.build_reward`: same loaders, same tensor preprocessing), used
as the published protocols use them (EVAL.md, "Training rewards vs evaluation scores"): the prompt as
given, never a training prefix, on the full decoded images. Each score is a mean over prompts (a prompt's
images averaged first) with a 95% percentile-bootstrap interval over prompts (`stats.bootstrap_mean_ci`).

Printed units follow the papers: CLIP and HPS as 100 x cosine, PickScore as logit_scale x cosine (about
100 x cosine), Aesthetic on its 1-10 scale. Any other registered reward (e.g. world-clip for the shapes
world) can be named in --metrics; its scores are printed in its own units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import DmdrError
from ..runtime.distributed import Dist
from .paired import unit_key
from .stats import bootstrap_mean_ci

DEFAULT_METRICS = ("clip", "aesthetic", "pick", "hps")


@dataclass(frozen=True)
class Metric:
    name: str  # as --metrics names it
    reward: str  # the reward registry's name
    weights_option: str  # the command-line option that takes its weights
    scale: float  # printed value = scale x raw score
    units: str
    column: str  # report table header


METRICS = {
    "clip": Metric("clip", "clip", "--clip-weights", 100.0, "100 x cosine", "CLIP"),
    "aesthetic": Metric("aesthetic", "aesthetic", "--aesthetic-weights", 1.0, "LAION aesthetic v2, 1-10", "Aesthetic"),
    "pick": Metric("pick", "pickscore", "--pick-weights", 1.0, "logit_scale x cosine", "Pick"),
    "hps": Metric("hps", "hps", "--hps-weights", 100.0, "100 x cosine", "HPS"),
}


def metric(name: str) -> Metric:
    """A built-in metric, or any registered reward by its registry name (printed in its own units)."""
    if name in METRICS:
        return METRICS[name]
    return Metric(name, name, f"--score-option {name}.path=PATH", 1.0, "", name)


def parse_metrics(text: str) -> list[Metric]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DmdrError(f"--metrics {text!r} names no score; e.g. --metrics {','.join(DEFAULT_METRICS)}")
    return [metric(n) for n in dict.fromkeys(names)]


def parse_score_options(items: list[str] | None) -> dict[str, dict]:
    """--score-option METRIC.KEY=VALUE (repeatable) -> {metric: {key: value}}; values read as YAML scalars
    (so `null` is None and `2` is a number)."""
    options: dict[str, dict] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        metric_name, dot, key = name.partition(".")
        if not eq or not dot or not metric_name or not key:
            raise DmdrError(f"--score-option {item!r}: write METRIC.KEY=VALUE, e.g. clip.arch=ViT-L-14 or "
                            f"hps.version=v2.0")
        options.setdefault(metric_name.strip(), {})[key.strip()] = yaml.safe_load(value) if value else None
    return options


@dataclass
class ScoreModel:
    metric: Metric
    reward: torch.nn.Module

    def describe(self) -> str:
        return getattr(self.reward, "source", self.metric.reward)


def load_score_models(metrics: list[Metric], weights: dict[str, str | None], options: dict[str, dict],
                      device: torch.device) -> list[ScoreModel]:
    """Each metric's reward model, frozen on `device` (bf16 on GPU); a missing weights file is one line
    naming it, where to get it and the option that takes its path."""
    from ..recipe.schema import RewardSpec
    from ..rewards import build_reward

    unknown = sorted(set(options) - {m.name for m in metrics})
    if unknown:
        raise DmdrError(f"--score-option {unknown[0]}.*: {unknown[0]!r} is not among --metrics "
                        f"{','.join(m.name for m in metrics)}")
    models = []
    for m in metrics:
        extra = dict(options.get(m.name, {}))
        path = weights.get(m.name) or extra.pop("path", None)
        key = f"@{m.name}"  # placeholder in the reward's messages, replaced by the option names below
        try:
            spec = RewardSpec(name=m.reward, path=None if path is None else str(path), options=extra, loss="linear")
            reward = build_reward(spec, device, key=key)
        except DmdrError as err:
            raise DmdrError(_cli_names(err.message, key, m)) from None
        models.append(ScoreModel(m, reward))
    return models


def _cli_names(message: str, key: str, m: Metric) -> str:
    """The reward loaders name recipe keys (`<key>.path`); on this command line those are options."""
    message = message.replace(f"{key}.path", m.weights_option).replace(f"{key}.options.", f"--score-option {m.name}.")
    return message.replace(key, f"--metrics {m.name}")


# ---------------------------------------------------------------------------------------------------
# Scoring a folder.

class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, root: Path, rows: list[dict]):
        self.root, self.rows = root, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        from PIL import Image

        with Image.open(self.root / self.rows[k]["file"]) as image:
            array = np.asarray(image.convert("RGB")).copy()
        return k, torch.from_numpy(array).permute(2, 0, 1)


def score_rows(root: Path, rows: list[dict], models: list[ScoreModel], *, batch: int, device: torch.device,
               workers: int = 0, progress=None) -> list[dict]:
    """{"file", "prompt", "prompt_index", <metric>: raw score} for every row; PNGs are decoded once (in
    `workers` loader processes) and every model scores the same batch."""
    loader = torch.utils.data.DataLoader(_ImageFiles(Path(root), rows), batch_size=batch, num_workers=workers,
                                         collate_fn=list, pin_memory=device.type == "cuda")
    results = []
    with torch.no_grad():
        for items in loader:
            for group in _same_size(items):
                indices = [k for k, _ in group]
                images = torch.stack([t for _, t in group]).to(device, non_blocking=True).float() / 255
                prompts = [rows[k]["prompt"] for k in indices]
                scores = {m.metric.name: m.reward(images, prompts).float().cpu().tolist() for m in models}
                for j, k in enumerate(indices):
                    results.append({"file": rows[k]["file"], "prompt": rows[k]["prompt"],
                                    "prompt_index": rows[k].get("prompt_index", rows[k]["prompt"]),
                                    **{name: values[j] for name, values in scores.items()}})
            if progress is not None:
                progress(len(items))
    return results


def _same_size(items: list[tuple[int, torch.Tensor]]) -> list[list[tuple[int, torch.Tensor]]]:
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(tuple(item[1].shape), []).append(item)
    return list(groups.values())


def summarize_scores(results: list[dict], models: list[ScoreModel]) -> dict[str, dict]:
    """Per metric: printed mean and 95% CI over prompts, with units and the weights used."""
    out = {}
    for m in models:
        per_prompt = _prompt_means(results, m.metric.name)
        ci = bootstrap_mean_ci(list(per_prompt.values()))
        scale = m.metric.scale
        out[m.metric.name] = {
            "mean": scale * ci.mean, "ci95": [scale * ci.low, scale * ci.high], "n_prompts": ci.n,
            "n_images": len(results), "units": m.metric.units or getattr(m.reward, "units", ""),
            "column": m.metric.column, "weights": m.describe(),
        }
    return out


def per_prompt_scores(results: list[dict], models: list[ScoreModel]) -> dict:
    """{"metrics": [names], "prompts": {unit: [each metric's mean over the prompt's images, printed units,
    7 significant digits]}}, the unit being the prompt's index and text (`paired.unit_key`): what
    `dmdr evaluate --compare` pairs across two reports. One table for all metrics keeps report.json small
    (about 100 KB for 600 prompts)."""
    means = {m.metric.name: _prompt_means(results, m.metric.name) for m in models}
    texts: dict = {}
    for r in results:
        texts.setdefault(r["prompt_index"], r["prompt"])
    order = sorted(texts, key=_index_order)
    return {"metrics": [m.metric.name for m in models],
            "prompts": {unit_key(k, texts[k]): [float(f"{m.metric.scale * means[m.metric.name][k]:.7g}")
                                                for m in models] for k in order}}


def _prompt_means(results: list[dict], name: str) -> dict:
    """{prompt index: mean of its images' raw scores}, prompts in index order."""
    per_prompt: dict = {}
    for r in results:
        per_prompt.setdefault(r["prompt_index"], []).append(r[name])
    return {k: float(np.mean(per_prompt[k])) for k in sorted(per_prompt, key=_index_order)}


def _index_order(index) -> tuple:
    """Prompt indices in order: numbers first (numerically), then prompt texts (folders without indices)."""
    return (0, index, "") if isinstance(index, int) else (1, 0, str(index))


def default_workers(device: torch.device) -> int:
    """PNG decoding in loader processes on GPU machines (1024 px PNGs take ~20 ms each); inline on CPU."""
    import os

    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def dist_score_rows(root: Path, rows: list[dict], models: list[ScoreModel], *, batch: int, dist: Dist,
                    workers: int, scratch: Path, console) -> list[dict] | None:
    """score_rows over this process's share; every row's scores on the main process (None elsewhere)."""
    from .shards import gather_records, image_progress, share

    mine = share(rows, dist)
    progress, task = image_progress(len(mine), "scoring", console, dist.is_main)
    with progress:
        results = score_rows(root, mine, models, batch=batch, device=dist.device, workers=workers,
                             progress=lambda n: progress.advance(task, n))
    return gather_records(results, dist, scratch, "scores")
