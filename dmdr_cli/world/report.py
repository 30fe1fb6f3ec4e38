"""The end of a shapes-world distillation: teacher vs student on the world's exact benchmarks.

Both are sampled on the same prompts with the same keyed noise: the teacher with its own scheduler
(25 steps, CFG: 50 NFE), the student with its few-step sampler (NFE = its steps). Scores: world-GenEval
(overall and per task), world-DPG, the world-clip reward and the distance to real renders
(evaluate/world_bench.py). The teacher's numbers are cached next to its weights, keyed by the settings
that produced them, so they are computed once (the shipped teacher ships its cache). Writes report/ (markdown, JSON, a teacher-vs-student
grid, curve plots) and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from rich.console import Console

from ..dmd.validation import grid_image, keyed_noise, student_images
from ..families.base import Guidance
from ..sampling import teacher_sample
from .detect import COUNTING_SCORE_THRESHOLD

TEACHER_FOLDER = Path(__file__).parent / "weights" / "teacher"  # the shipped one
EVAL_GENEVAL_PROMPTS = 120  # 20 per task: about 1 CPU-minute per model at 24 px
EVAL_DPG_ITEMS = 12  # x 4 tiles
EVAL_SEED, EVAL_TAG = 0, "world-eval"  # teacher and student start from the same keyed noise
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def is_world_model(cfg) -> bool:
    """A recipe distilling a shapes-world teacher: a pipeline folder that `dmdr world teacher` wrote (its
    recipe.yaml has a world.teacher section). Its report is the world table."""
    import yaml

    written_by = Path(cfg.model.pretrained) / "recipe.yaml"
    if not (written_by.is_file() and (written_by.parent / "model_index.json").is_file()):
        return False
    try:
        recipe = yaml.safe_load(written_by.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(recipe, dict) and isinstance(recipe.get("world"), dict) and "teacher" in recipe["world"]


def eval_entries(resolution: int) -> list[dict]:
    from ..evaluate.world_bench import world_dpg_items, world_geneval_metadata

    geneval, _ = world_geneval_metadata(resolution, EVAL_GENEVAL_PROMPTS)
    dense, _ = world_dpg_items(resolution, EVAL_DPG_ITEMS)
    return list(geneval) + [item for item in dense for _ in range(4)]  # 4 DPG tiles per dense item


@torch.no_grad()
def teacher_images(ctx, conds, steps: int, cfg_scale: float, batch: int = 64) -> torch.Tensor:
    net = ctx.nets.as_real(0.0)  # adapters off: exactly the teacher
    noises = keyed_noise(ctx.family, conds.batch_size, ctx.cfg.model.resolution, EVAL_SEED, EVAL_TAG).to(ctx.device)
    out = []
    for s in range(0, conds.batch_size, batch):
        cond = conds[s:s + batch].to(ctx.device)
        noise = noises[s:s + batch]
        with ctx.amp():
            out.append(ctx.family.decode(teacher_sample(ctx.family, net, noise, cond, steps,
                                                        Guidance(cfg_scale, ctx.uncond))).cpu())
    return torch.cat(out)


def _reward(cfg, device):
    from ..recipe.schema import RewardSpec
    from ..rewards.registry import build_reward

    try:
        from . import reward  # noqa: F401  registers world-clip
        return build_reward(RewardSpec(name="world-clip"), device)
    except Exception:  # no trained reward shipped: the table leaves the column out
        return None


def teacher_metrics(ctx, entries, conds, steps: int, cfg_scale: float, reward) -> tuple[dict, torch.Tensor]:
    """The teacher's scores, from the cache next to its weights when the settings match."""
    from ..evaluate.world_bench import world_metrics

    folder = Path(ctx.cfg.model.pretrained)
    weights = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.glob("*/*.safetensors")))).hexdigest()
    scheduler = ctx.family.components.scheduler_config  # the teacher samples with it
    key = hashlib.sha256(json.dumps([weights, sorted(scheduler.items()), COUNTING_SCORE_THRESHOLD, EVAL_SEED, EVAL_TAG,
                                     len(entries), steps, cfg_scale, ctx.cfg.model.resolution,
                                     [e["prompt"] for e in entries]]).encode()).hexdigest()[:16]
    cache = folder / "eval_cache.json"  # next to the teacher's weights, keyed by them and the settings
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):  # none yet (or unreadable): computed below
        cached = {}
    images = teacher_images(ctx, conds[:48], steps, cfg_scale)  # for the side-by-side grid only
    if key in cached:
        return cached[key], images
    metrics = world_metrics(teacher_images(ctx, conds, steps, cfg_scale), entries, reward=reward)
    cached[key] = metrics
    try:  # renamed into place: runs side by side never read a half-written cache
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(cache)
    except OSError:  # a read-only install: recompute next time
        pass
    return metrics, images


def student_metrics(ctx, entries, conds, reward=None) -> tuple[dict, torch.Tensor]:
    """The student's world metrics and images, from the teacher's noise row for row."""
    from ..evaluate.world_bench import world_metrics

    images = student_images(ctx, conds, EVAL_SEED, EVAL_TAG)
    return world_metrics(images, entries, reward=reward), images


def validation_metrics(ctx, entries, conds) -> dict:
    """The final table's exact metrics as flat validation scalars, for curves against generator step
    (about 6 s per validation on one CPU thread at 24 px: 168 images x 4 steps at 0.55 s per batch-64 forward,
    0.5 s of metrics; no reward, which the run's own validation has)."""
    metrics, _ = student_metrics(ctx, entries, conds)
    flat = {f"val_world_geneval_{task}": metrics["geneval"][task] for task in TASKS}
    flat.update(val_world_geneval=metrics["geneval"]["overall"], val_world_dpg=metrics["dpg"]["overall"],
                val_world_distance=metrics["distance"])
    return flat


def world_report(ctx, encode, run_dir: Path, console: Console) -> dict:
    """Evaluate teacher and student, print the table, write run_dir/report/."""
    entries = eval_entries(ctx.cfg.model.resolution)
    conds = encode([e["prompt"] for e in entries])
    reward = _reward(ctx.cfg, ctx.device)
    steps = ctx.cfg.sample.steps or 25
    cfg_scale = ctx.cfg.sample.cfg or ctx.cfg.guidance.scale
    with console.status("evaluating teacher and student on the world benchmarks"):
        teacher, teacher_grid = teacher_metrics(ctx, entries, conds, steps, cfg_scale, reward)
        student, student_all = student_metrics(ctx, entries, conds, reward)
    rows = {f"teacher ({steps} steps, CFG {cfg_scale:g})": (teacher, 2 * steps),
            f"student ({len(ctx.student_times)} steps)": (student, len(ctx.student_times))}
    console.print(render_table(rows), markup=False, highlight=False)
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"teacher": teacher, "student": student,
                                                    "teacher_steps": steps, "teacher_cfg": cfg_scale,
                                                    "student_steps": len(ctx.student_times),
                                                    "eval_prompts": len(entries)}, indent=1))
    side_by_side(teacher_grid, student_all[:48], folder / "teacher_vs_student.png")
    plot_curves(run_dir / "log.jsonl", folder / "curves.png")
    (folder / "report.md").write_text(markdown(rows, entries))
    console.print(f"report: {folder}")
    return {"teacher": teacher, "student": student}


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
             f"{sum('tag' in e for e in entries)} GenEval-style prompts (1 image each) and "
             f"{sum('questions' in e for e in entries) // 4} dense items (4 tiles each), same noise for both models. "
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
