"""The end of a shapes-world distillation: teacher vs student on the world's exact benchmarks.

Both are sampled on the same prompts with the same keyed noise: the teacher with its own scheduler
(25 steps, CFG: 50 NFE), the student with its few-step sampler (NFE = its steps). Scores: world-GenEval
(overall and per task), world-DPG, the world-clip reward and the distance to real renders
(world/bench.py). The teacher's numbers are cached next to its weights, keyed by the settings
that produced them, so they are computed once (the shipped teacher ships its cache). Writes report/ (markdown, JSON, a teacher-vs-student
grid, curve plots) and prints the table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ..dmd.validation import grid_image, keyed_noise, student_images
from ..evaluate.plugins import register_run_bench
from ..families.base import Guidance
from ..sampling import teacher_sample
from .detect import ACCEPT_SCORE
from .domain import is_world_model

TEACHER_FOLDER = Path(__file__).parent / "weights" / "teacher"  # the shipped one
EVAL_SEED, EVAL_TAG = 0, "world-eval"  # teacher and student start from the same keyed noise
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GRID_IMAGES = 48  # teacher images kept in the cache for the side-by-side grid
CACHE_FILE = "eval_cache.json"


def eval_entries(resolution: int) -> list[dict]:
    """The frozen evaluation set, one entry per image (world/bench.py)."""
    from .bench import evaluation_entries

    return evaluation_entries(resolution)


@torch.no_grad()
def teacher_images(family, net, uncond, conds, steps: int, cfg_scale: float, resolution: int, device,
                   amp=contextlib.nullcontext, batch: int = 64) -> torch.Tensor:
    """The teacher's samples of `conds` from the evaluation's keyed noise (row i: keyed_generator(0, tag, i))."""
    noises = keyed_noise(family, conds.batch_size, resolution, EVAL_SEED, EVAL_TAG).to(device)
    out = []
    for s in range(0, conds.batch_size, batch):
        with amp():
            latents = teacher_sample(family, net, noises[s:s + batch], conds[s:s + batch].to(device), steps,
                                     Guidance(cfg_scale, uncond))
            out.append(family.decode(latents).float().cpu())
    return torch.cat(out)


def _reward(cfg, device):
    from ..recipe.schema import RewardSpec
    from ..rewards.registry import build_reward

    try:
        return build_reward(RewardSpec(name="world-clip"), device)
    except Exception:  # no trained reward shipped: the table leaves the column out
        return None


def cache_key(folder: Path, scheduler: dict, entries, steps: int, cfg_scale: float, resolution: int,
              reward) -> str:
    """The teacher cache's key: its weights, sampler, the evaluation set and the evaluator's frozen rule."""
    weights = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.glob("*/*.safetensors")))).hexdigest()
    return hashlib.sha256(json.dumps([weights, sorted(scheduler.items()), ACCEPT_SCORE, EVAL_SEED, EVAL_TAG, steps,
                                      cfg_scale, resolution, reward is not None,
                                      [[e["prompt"], e.get("unit")] for e in entries]]).encode()).hexdigest()[:16]


def teacher_metrics(family, net, uncond, conds, entries, steps: int, cfg_scale: float, reward, folder: Path,
                    resolution: int, device, amp=contextlib.nullcontext) -> tuple[dict, dict]:
    """(metrics with per-prompt "units", {"features", "grid"}) of the teacher, from the cache next to its
    weights when the key matches: eval_cache.json holds the metrics, eval_cache-<key>.npz the images' FD
    features and the grid's images. Otherwise computed (1,392 images x 50 NFE) and written there."""
    from .bench import world_evaluation

    folder = Path(folder)
    key = cache_key(folder, family.components.scheduler_config, entries, steps, cfg_scale, resolution, reward)
    cache, arrays = folder / CACHE_FILE, folder / f"eval_cache-{key}.npz"
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):  # none yet (or unreadable): computed below
        cached = {}
    if key in cached and arrays.is_file():
        with np.load(arrays) as stored:
            return cached[key], {"features": stored["features"], "grid": torch.from_numpy(stored["grid"])}
    images = teacher_images(family, net, uncond, conds, steps, cfg_scale, resolution, device, amp)
    metrics, details = world_evaluation(images, entries, reward=reward)
    extra = {"features": details["features"], "grid": images[:GRID_IMAGES]}
    try:  # renamed into place: runs side by side never read a half-written cache
        tmp = arrays.with_name(f".{arrays.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, features=extra["features"].astype(np.float32), grid=extra["grid"].numpy())
        tmp.replace(arrays)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**cached, key: metrics}, indent=1))
        tmp.replace(cache)
    except OSError:  # a read-only install: recompute next time
        pass
    return metrics, extra


def student_metrics(ctx, entries, conds, reward=None) -> tuple[dict, dict, torch.Tensor]:
    """The student's world metrics, details (per-image verdicts, FD features) and images, from the
    teacher's noise row for row."""
    from .bench import world_evaluation

    images = student_images(ctx, conds, EVAL_SEED, EVAL_TAG)
    metrics, details = world_evaluation(images, entries, reward=reward)
    return metrics, details, images


def validation_entries(resolution: int, per_task: int = 20, dense_items: int = 12) -> list[dict]:
    """The validation set (builtin:world-val, 168 images by default), never the evaluation set."""
    from .bench import validation_entries as entries

    return entries(resolution, per_task, dense_items)


def validation_metrics(ctx, entries, conds) -> dict:
    """The final table's exact metrics on the validation set as flat scalars, for curves against generator
    step (about 6 s per validation on one CPU thread at 24 px: 168 images x 4 steps at 0.55 s per batch-64
    forward, 0.5 s of metrics; no reward, which the run's own validation has)."""
    metrics, details, _ = student_metrics(ctx, entries, conds)
    flat = {f"val_world_geneval_{task}": metrics["geneval"][task] for task in TASKS}
    flat.update(val_world_geneval=metrics["geneval"]["overall"], val_world_dpg=metrics["dpg"]["overall"],
                val_world_distance=metrics["distance"], val_world_empty=empty_share(details["records"]))
    return flat


def empty_share(records: list[dict]) -> float:
    """The share of GenEval images in which the detector accepts no object at all: the empty canvases a
    mode-seeking student slides into (docs/results.md, "Training longer")."""
    return sum(not r["detections"] for r in records) / max(len(records), 1)


def paired_intervals(student: dict, teacher: dict, student_features=None, teacher_features=None,
                     real_features=None, seed: int = 0) -> dict[str, dict]:
    """Student minus teacher, 95% paired bootstrap intervals (evaluate/paired.py): world-GenEval overall
    (stratified by task) and per task over prompts, world-DPG over dense items, the reward over prompts,
    and FD over images (the same resampled images for both models and the real renders)."""
    from ..evaluate.frechet import frechet_between
    from ..evaluate.paired import bootstrap_interval, paired_mean_difference

    out: dict[str, dict] = {}
    su, tu = student.get("units", {}), teacher.get("units", {})
    if "geneval" in su and "geneval" in tu:
        units = [u for u in su["geneval"] if u in tu["geneval"]]
        tags = [su["geneval"][u][0] for u in units]
        s = np.array([su["geneval"][u][1] for u in units])
        t = np.array([tu["geneval"][u][1] for u in units])
        out["geneval"] = paired_mean_difference(s, t, strata=tags, seed=seed).as_dict()
        for task in dict.fromkeys(tags):
            mine = np.array([tag == task for tag in tags])
            out[task] = paired_mean_difference(s[mine], t[mine], seed=seed).as_dict()
    for name in ("dpg", "reward"):
        if name in su and name in tu:
            units = [u for u in su[name] if u in tu[name]]  # {unit: score} on both sides
            out[name] = paired_mean_difference([su[name][u] for u in units], [tu[name][u] for u in units],
                                               seed=seed).as_dict()
    if student_features is not None and teacher_features is not None and real_features is not None:
        a, b, r = (np.asarray(x, dtype=np.float64) for x in (student_features, teacher_features, real_features))
        out["distance"] = bootstrap_interval(
            len(r), lambda idx: frechet_between(a[idx], r[idx]) - frechet_between(b[idx], r[idx]), seed=seed).as_dict()
    return out


def world_report(ctx, encode, run_dir: Path, console: Console) -> dict:
    """Evaluate teacher and student on the frozen evaluation set, print the table and the paired intervals,
    write run_dir/report/ (report.json with both models' scores and the intervals, results.jsonl with the
    student's per-image verdicts, each naming its image in images/, report.md, grid, curves).

    Cost, measured at 24 px on one CPU thread: the student's 1,392 images x 4 steps about 60 s of sampling and
    15 s of scoring (detector, DPG, FD features, reward) plus 5 s of bootstrap; the teacher's 1,392 x 50 NFE
    are read from its cache (computing them once: about 25 minutes)."""
    entries = eval_entries(ctx.cfg.model.resolution)
    conds = encode([e["prompt"] for e in entries])
    reward = _reward(ctx.cfg, ctx.device)
    steps = ctx.cfg.sample.steps or 25
    cfg_scale = ctx.cfg.sample.cfg or ctx.cfg.guidance.scale
    with console.status("evaluating teacher and student on the world benchmarks"):
        teacher, cached = teacher_metrics(ctx.family, ctx.nets.as_real(0.0), ctx.uncond, conds, entries, steps,
                                          cfg_scale, reward, Path(ctx.cfg.model.pretrained), ctx.cfg.model.resolution,
                                          ctx.device, ctx.amp)
        student, details, student_all = student_metrics(ctx, entries, conds, reward)
        intervals = paired_intervals(student, teacher, details.get("features"), cached["features"],
                                     details.get("real_features"))
    rows = {f"teacher ({steps} steps, CFG {cfg_scale:g})": (teacher, 2 * steps),
            f"student ({len(ctx.student_times)} steps)": (student, len(ctx.student_times))}
    console.print(render_table(rows), markup=False, highlight=False)
    console.print(render_intervals(teacher, student, intervals, entries), markup=False, highlight=False)
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"teacher": teacher, "student": student, "paired": intervals,
                                                    "teacher_steps": steps, "teacher_cfg": cfg_scale,
                                                    "student_steps": len(ctx.student_times),
                                                    "eval_images": len(entries)}, indent=1))
    from .bench import write_geneval_images, write_results

    write_geneval_images(folder, student_all, entries, details["records"])
    write_results(folder / "results.jsonl", details["records"])
    side_by_side(cached["grid"], student_all[:GRID_IMAGES], folder / "teacher_vs_student.png")
    plot_curves(run_dir / "log.jsonl", folder / "curves.png")
    (folder / "report.md").write_text(markdown(rows, entries) + interval_markdown(teacher, student, intervals))
    console.print(f"report: {folder}")
    return {"teacher": teacher, "student": student, "paired": intervals}


INTERVAL_ROWS = (("geneval", "world-GenEval"), *((t, f"  {t}") for t in TASKS), ("dpg", "world-DPG"),
                 ("reward", "reward"), ("distance", "FD (lower is better)"))


def _value(metrics: dict, name: str) -> float:
    if name in TASKS:
        return metrics.get("geneval", {}).get(name, float("nan"))
    if name in ("geneval", "dpg"):
        return metrics.get(name, {}).get("overall", float("nan"))
    return metrics.get(name, float("nan"))


def _interval_lines(teacher: dict, student: dict, intervals: dict) -> list[tuple[str, str, str, str]]:
    lines = []
    for name, label in INTERVAL_ROWS:
        if name in intervals:
            ci = intervals[name]
            digits = 1 if name in ("dpg", "distance") else 3
            lines.append((label, f"{_value(teacher, name):.{digits}f}", f"{_value(student, name):.{digits}f}",
                          f"{ci['estimate']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]"))
    return lines


def _interval_title(entries, intervals: dict) -> str:
    prompts = len({e["unit"] for e in entries if "tag" in e})
    items = len({e["unit"] for e in entries if "questions" in e})
    resamples = next(iter(intervals.values()))["resamples"] if intervals else 0
    return (f"student - teacher, 95% paired bootstrap ({resamples} resamples) over {prompts} prompts,\n"
            f"{items} dense items (DPG) and {len(entries)} images (FD); an interval holding 0 is no difference")


def render_intervals(teacher: dict, student: dict, intervals: dict, entries) -> str:
    """The paired differences under the table: one line per metric, at most 100 columns."""
    lines = [_interval_title(entries, intervals), f"{'metric':<22}{'teacher':>9}{'student':>9}   difference [95%]"]
    lines.append("-" * len(lines[-1]))
    lines += [f"{a:<22}{b:>9}{c:>9}   {d}" for a, b, c, d in _interval_lines(teacher, student, intervals)]
    return "\n".join(lines)


def interval_markdown(teacher: dict, student: dict, intervals: dict) -> str:
    rows = ["## Student - teacher, paired", "", "| metric | teacher | student | difference [95% interval] |",
            "| --- | --- | --- | --- |"]
    rows += [f"| {a.strip()} | {b} | {c} | {d} |" for a, b, c, d in _interval_lines(teacher, student, intervals)]
    return "\n".join(rows) + "\n"


def _cells(m: dict, nfe: int) -> list[str]:
    g = m.get("geneval", {})
    return ([str(nfe), f"{g.get('overall', float('nan')):.3f}"] + [f"{g.get(t, float('nan')):.2f}" for t in TASKS]
            + [f"{m.get('dpg', {}).get('overall', float('nan')):.1f}", f"{m.get('reward', float('nan')):.3f}",
               f"{m.get('distance', float('nan')):.1f}"])


HEADER = ["model", "NFE", "GenEval", *TASKS, "DPG", "reward", "distance"]
SHORT = ["model", "NFE", "GenEval", "single", "two", "count", "color", "pos", "attr", "DPG", "reward", "FD"]


def render_table(rows: dict) -> str:
    """A fixed-width table for an 80-column terminal; report.md has the long column names."""
    widths = [8, 4, 7, 6, 5, 5, 5, 5, 5, 5, 6, 6]
    title = ("shapes world, teacher vs student: world-GenEval (overall, per task), world-DPG,\n"
             "world-clip reward, FD = Frechet distance to real renders (lower is better)")
    lines = [title, " ".join(h.rjust(w) if k else h.ljust(w) for k, (h, w) in enumerate(zip(SHORT, widths)))]
    lines.append("-" * len(lines[-1]))
    for name, (m, nfe) in rows.items():
        cells = [name.split(" (")[0], *_cells(m, nfe)]
        lines.append(" ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def markdown(rows: dict, entries) -> str:
    lines = ["# Shapes-world distillation report", "",
             f"{len({e['unit'] for e in entries if 'tag' in e})} GenEval-style prompts "
             f"({sum('tag' in e for e in entries)} images) and "
             f"{len({e['unit'] for e in entries if 'questions' in e})} dense items (4 tiles each), same noise for "
             "both models; per-image verdicts in results.jsonl. "
             "Scores by the exact detector; reward = world-clip cosine; distance = Frechet distance to real renders "
             "(lower is better).", "", "| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for name, (m, nfe) in rows.items():
        lines.append("| " + " | ".join([name, *_cells(m, nfe)]) + " |")
    lines += ["", "![teacher vs student](teacher_vs_student.png)", "", "![training curves](curves.png)", ""]
    return "\n".join(lines)


def side_by_side(teacher: torch.Tensor, student: torch.Tensor, path: Path) -> None:
    """Rows of 8: teacher row, student row, alternating, on the same prompts and noise."""
    n = min(len(teacher), len(student)) // 8 * 8
    pairs = [torch.cat([teacher[i:i + 8], student[i:i + 8]]) for i in range(0, n, 8)]
    grid_image(torch.cat(pairs), cols=8).resize((8 * 4 * 26, len(pairs) * 2 * 4 * 26), 0).save(path)


def plot_curves(log: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if '"dmd_loss"' in line]
    keys = [k for k in ("dmd_loss", "fake_loss", "rl_loss", "reward_world-clip", "real_lora_scale", "renoise_t_mean")
            if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot(*zip(*points)) if points else None
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("generator step", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class WorldRunBench:
    """The shapes world's run bench (evaluate/plugins.py): exact metrics on the validation set at every
    validation, and the teacher-vs-student table on the evaluation set at the end of `dmdr distill`."""

    name = "world"

    def __init__(self, cfg, stage: str):
        self.validation = validation_entries(cfg.model.resolution, cfg.world.validation_per_task,
                                             cfg.world.validation_dense_items)  # never the evaluation set
        self.evaluation = eval_entries(cfg.model.resolution) if stage == "distill" else []
        self._validation_conds = None

    def prompts(self) -> list[str]:
        return [e["prompt"] for e in self.validation + self.evaluation]

    def validation_metrics(self, ctx, encode) -> dict:
        if self._validation_conds is None:  # gathered once, not at every validation
            self._validation_conds = encode([e["prompt"] for e in self.validation])
        return validation_metrics(ctx, self.validation, self._validation_conds)

    def final_report(self, ctx, encode, run_dir: Path, console: Console) -> dict | None:
        return world_report(ctx, encode, run_dir, console) if self.evaluation else None


def _world_run_bench(cfg, stage: str) -> WorldRunBench | None:
    return WorldRunBench(cfg, stage) if is_world_model(cfg) else None


register_run_bench("world", _world_run_bench)
