"""The shapes-world study: the paper's ablations, each row `dmdr distill recipes/world/dmdr.yaml` with overrides.

    python scripts/world_ablations.py run table --jobs 2       # (a) what each part contributes
    python scripts/world_ablations.py run coldstart --jobs 2   # (b) DynaDG / DynaRS over the first steps
    python scripts/world_ablations.py run long --jobs 2        # distill only and distill + ReFL at 4x the steps
    python scripts/world_ablations.py run all --jobs 2         # the three sets
    python scripts/world_ablations.py summarize                # docs/results.md's study section + plots

Every row runs on the shipped recipe as it is (no pinned knob). `run` prints each command and skips
runs already logged, so an interrupted set continues where it stopped, across sessions: a finished
run's record (its report's scores with the per-prompt units, its validation curve, its wall time) is
written to docs/study/<set>/<row>-seed<S>.json, small enough to commit; the run folder itself
(runs/study/..., checkpoints) is scratch, and a run killed in the middle resumes from its last
checkpoint while that folder exists. Runs use one torch thread each, so `--jobs 2` fills 2 cores.

`summarize` reads those records alone. Per row: mean and std over seeds, and the paired 95% bootstrap
interval of student minus teacher that resamples the row's seeds and the prompts together (1000 seeded
draws, prompts within GenEval's tasks: evaluate/paired.py, paired_seed_unit_difference).

Rows, after the paper's Tables 4 and 5:
  table:     init (the teacher's weights at the student's 4 steps), distill only (cold start + DMD),
             RL only (ReFL on world-clip from the teacher, no DMD), distill + ReFL (the main job),
             distill + DPO, distill + GRPO; the teacher row comes from the runs' reports (its cache).
  coldstart: the first 60 generator steps with plain DMD (uniform renoising, no DynaDG), + DynaDG,
             + DynaRS, + both, validation every 5 steps.
  long:      distill only and distill + ReFL with 4x the main job's generator steps (480; the cold start
             keeps its 60 steps, RL still starts at 60), validation every 40 steps.
  knobs:     the main job with a knob at its value before it was chosen on validation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = "recipes/world/dmdr.yaml"
SCRATCH = Path("runs/study")
RECORDS = Path("docs/study")
PLOTS = Path("docs/ablations")
RESULTS = Path("docs/results.md")
BEGIN, END = "<!-- study:begin (scripts/world_ablations.py summarize) -->", "<!-- study:end -->"

# Core-hour budgets, each over its own sets' attempts: the first study (issue 13), then the diagnosis of the
# decline after the cold start and the stabiliser candidates (issue 20), then the study on what is adopted.
BUDGETS = {"issue 13": (("table", "coldstart", "long", "knobs"), 8.0),
           "issue 20 diagnosis": (("diagnosis", "candidates"), 6.0),
           "issue 20 study": (("adopted",), 10.0)}
BUDGET_HOURS = BUDGETS["issue 13"][1]
FIVE, THREE = (0, 1, 2, 3, 4), (0, 1, 2)
# Per set, per row: (recipe overrides, seeds).
TABLE = {
    "init": (["coldstart.steps=0", "train.steps=1", "train.lr_generator=1e-12", "rl.algorithm=none"], (0,)),
    "distill only": (["rl.algorithm=none"], FIVE),
    "RL only": (["coldstart.steps=0", "rl.start_step=0", "dmd.weight=0"], FIVE),
    "distill + ReFL": ([], FIVE),
    "distill + DPO": (["rl.algorithm=dpo"], THREE),
    "distill + GRPO": (["rl.algorithm=grpo"], THREE),
}
_COLD = ["train.steps=60", "rl.algorithm=none", "train.validate_every=5", "train.checkpoint_every=20"]
COLDSTART = {
    "plain DMD": (_COLD + ["coldstart.dynadg.enabled=false", "coldstart.dynars.enabled=false"], THREE),
    "+ DynaDG": (_COLD + ["coldstart.dynars.enabled=false"], THREE),
    "+ DynaRS": (_COLD + ["coldstart.dynadg.enabled=false"], THREE),
    "+ DynaDG + DynaRS": (_COLD, THREE),
}
_LONG = ["train.steps=480", "train.validate_every=40", "train.checkpoint_every=80"]
LONG = {
    "distill only, 480 steps": (_LONG + ["rl.algorithm=none"], THREE),
    "distill + ReFL, 480 steps": (_LONG, THREE),
}
# The main job with one knob changed: as it was before the shipped value was chosen on validation, or a
# candidate. A candidate is adopted only on the validation prompts, by the rule written before it ran
# (docs/results.md, "Knobs tried after the study"): the candidate with the highest mean val_world_geneval
# at steps 100 and 120 over seeds 0-2, if that beats the shipped recipe's (the table's distill + ReFL, same
# seeds and steps) by 0.03 or more.
KNOBS = {
    "lr_guidance 2e-4 (before)": (["train.lr_guidance=2e-4"], (0,)),
    # the authors' stage-2 cut (ALGORITHM.md: SD3-M 1e-6 / 5e-7 -> 5e-7 / 2e-7) after the 60 cold-start steps
    "stage-2 rates at the authors' ratio": (["coldstart.lr_generator=2e-5", "coldstart.lr_guidance=1e-3",
                                             "train.lr_generator=1e-5", "train.lr_guidance=4e-4"], THREE),
    "stage-2 rates at half the authors' ratio": (["coldstart.lr_generator=2e-5", "coldstart.lr_guidance=1e-3",
                                                  "train.lr_generator=5e-6", "train.lr_guidance=2e-4"], THREE),
    # DynaRS's high-noise emphasis decays over the whole run instead of ending with the cold start
    "DynaRS over all 120 steps": (["coldstart.dynars.steps=120"], THREE),
}
# Why the validation score falls after the cold start (issue 20): a factorial on DMD alone (the probes of
# 2026-12-06 found DMD, not ReFL, emptying the canvases), one factor of stage 2 at a time against the table's
# `distill only` (5 seeds): the real score stays DynaDG's (s_r held near 0.5 instead of reaching the CFG'd
# teacher at step 60), the renoising stays DynaRS's Beta(4, 1.5) instead of turning uniform, both, and a 2x
# larger batch (2x the cost per run; 4x did not fit the budget). The RL term (table: distill + ReFL vs distill only) and the learning rates (knobs) have records.
_HELD = 1_000_000  # a schedule over a million steps is constant over 120
_DMD_ONLY = ["rl.algorithm=none"]
DIAGNOSIS = {
    "distill only, DynaDG held": (_DMD_ONLY + [f"coldstart.dynadg.steps={_HELD}"], THREE),
    "distill only, DynaRS held": (_DMD_ONLY + [f"coldstart.dynars.steps={_HELD}"], THREE),
    "distill only, DynaDG and DynaRS held": (_DMD_ONLY + [f"coldstart.dynadg.steps={_HELD}",
                                                          f"coldstart.dynars.steps={_HELD}"], THREE),
    "distill only, batch 16": (_DMD_ONLY + ["train.batch_size=16"], THREE),
}
# Stabiliser candidates (issue 20), on the larger validation set (80 GenEval-style prompts per task, 48 dense
# items: about half the standard error of the default 20 / 12), with the shipped recipe re-run on it as the
# reference row. The rule, fixed before any of them ran (docs/results.md, "Training longer"): per row, V(s) =
# mean over seeds 0-2 of val_world_geneval at step s; level L = (V(100) + V(120)) / 2, decline D = L - V(60).
# Adopted: the candidate with the highest L among those with D >= -0.015 and L >= L(shipped) + 0.02; none
# otherwise. The evaluation set is read only after the choice.
_PAIRS = ["ode_regression.pairs=512", "ode_regression.seed=0", "ode_regression.cache=runs/study/world-ode-pairs.safetensors"]
CANDIDATES = {
    "shipped recipe": ([], THREE),
    "EMA 0.95 from step 60": (["ema.decay=0.95", "ema.start_step=60"], THREE),
    "regression term 0.25": (["ode_regression.weight=0.25"] + _PAIRS, THREE),
    "regression term 1.0": (["ode_regression.weight=1.0"] + _PAIRS, THREE),
    # the diagnosis found the reward blind to empty canvases: ReFL on world-clip retrained with null canvases
    # as negatives (recipes/world/reward-null.yaml); the evaluation's reward column stays the frozen world-clip
    "ReFL on world-clip with null canvases": (
        ["rl.rewards=[{name: world-clip, path: dmdr_cli/world/weights/reward-null}]"], THREE),
}
# The study again on the recipe as shipped after the candidates (issue 20, item 4), all on the larger validation
# set: distill only and distill + ReFL (5 seeds), the cold start alone (3), both at 4x the steps (3), and the
# image-using baseline the paper compares against: DMD2's layout (full fake-score copy) with its GAN head on the
# fake score's bottleneck, fed the world's real renders, no RL (3).
_EVERY20 = ["train.validate_every=20"]
ADOPTED = {
    "distill only": (_EVERY20 + ["rl.algorithm=none"], FIVE),
    "distill + ReFL": (_EVERY20, FIVE),
    "cold start": (["train.steps=60", "rl.algorithm=none", "train.validate_every=10"], THREE),
    # validated every 60 steps: 60 (the cold start's end), 120 (the main job's length), ..., 480
    "distill only, 480 steps": (_LONG + ["train.validate_every=60", "rl.algorithm=none"], THREE),
    # 5 seeds from 2026-12-07 03:35 UTC, after its 3-seed result: the issue judges "the 5-seed DMDR student", and
    # the 120-step row (5 seeds) and this one answer it for the main job's length and for training longer
    "distill + ReFL, 480 steps": (_LONG + ["train.validate_every=60"], FIVE),
    "DMD2 layout + GAN on renders": (_EVERY20 + ["rl.algorithm=none", "guidance.layout=dmd2", "gan.weight=0.01",
                                                 "gan.features=fake", "data.images=builtin:world-renders"], THREE),
}
SETS = {"table": TABLE, "coldstart": COLDSTART, "long": LONG, "knobs": KNOBS, "diagnosis": DIAGNOSIS,
        "candidates": CANDIDATES, "adopted": ADOPTED}
# sets whose summary adds the validation-curve table (decline after the cold start), with a reference row
CURVE_TABLES = {"diagnosis": ("table", "distill only"), "candidates": None, "adopted": None}
EXTRA = {"table": ["train.validate_every=20"], "coldstart": [], "long": [], "knobs": ["train.validate_every=20"],
         "diagnosis": ["train.validate_every=20"],
         "candidates": ["train.validate_every=20", "world.validation_per_task=80", "world.validation_dense_items=48"],
         "adopted": ["world.validation_per_task=80", "world.validation_dense_items=48"]}
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
CURVE_KEYS = ("fake_loss", "fake_to_teacher_loss", "teacher_loss_on_generator", "dmd_loss", "reward_world-clip", "renoise_t_mean")


def slug(row: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-")


def record_path(set_name: str, row: str, seed: int) -> Path:
    return RECORDS / set_name / f"{slug(row)}-seed{seed}.json"


def run_dir(set_name: str, row: str, seed: int) -> Path:
    return SCRATCH / set_name / f"{slug(row)}-seed{seed}"


def command(set_name: str, row: str, seed: int) -> list[str]:
    overrides = SETS[set_name][row][0] + EXTRA[set_name]
    return ["dmdr", "distill", RECIPE, *overrides, f"train.seed={seed}", f"output.dir={run_dir(set_name, row, seed)}"]


def python_command(cmd: list[str]) -> list[str]:
    """`dmdr ...` as `python -m dmdr_cli ...` from this checkout, whatever `pip install -e` points at."""
    return [sys.executable, "-m", "dmdr_cli", *cmd[1:]]


def make_record(set_name: str, row: str, seed: int, folder: Path, seconds: float) -> dict:
    """What summarize needs from a finished run, without its checkpoints: the student's scores (with the
    per-prompt units), the run's own paired intervals, the validation curve and a few training curves."""
    report = json.loads((folder / "report" / "report.json").read_text())
    validation, curves = [], []
    for line in (folder / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "val_world_geneval" in entry:
            validation.append({k: v for k, v in entry.items() if k == "step" or k.startswith("val_")})
        picked = {k: entry[k] for k in CURVE_KEYS if k in entry}
        if picked:
            curves.append({"step": entry["step"], **picked})
    return {"set": set_name, "row": row, "seed": seed, "command": shlex.join(command(set_name, row, seed)),
            "seconds": round(seconds, 1), "student_steps": report["student_steps"],
            "teacher_steps": report["teacher_steps"], "student": _rounded(report["student"]),
            "paired": report.get("paired", {}), "teacher": {k: v for k, v in report["teacher"].items() if k != "units"},
            "validation": validation, "curves": curves}


def _rounded(value, digits: int = 5):
    """Per-prompt scores to 5 digits: a record stays small enough to commit, the intervals do not move."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def save_teacher(report: dict) -> None:
    """The teacher's scores with its per-prompt units, once for the study (every run reads the same cache)."""
    path = RECORDS / "teacher.json"
    if not path.is_file():
        path.write_text(json.dumps({"teacher_steps": report["teacher_steps"], "teacher": _rounded(report["teacher"])}) + "\n")


_LOCK, _RUNNING = threading.Lock(), set()  # the runs this process has in flight, for the budget check


def budget_of(set_name: str) -> tuple[str, tuple[str, ...], float]:
    """The budget a set's runs count against: its name, its sets and its core-hours."""
    return next((name, sets, hours) for name, (sets, hours) in BUDGETS.items() if set_name in sets)


def run_one(set_name: str, row: str, seed: int, limit_hours: float | None = None) -> None:
    target = record_path(set_name, row, seed)
    if target.is_file():
        return
    limit_hours = budget_of(set_name)[2] if limit_hours is None else limit_hours
    with _LOCK:
        if not fits_budget(set_name, limit_hours, len(_RUNNING)):
            print(f"skipped: {set_name}/{row} seed {seed} would take the study past its {limit_hours:g} "
                  f"core-hours", flush=True)
            return
        _RUNNING.add((set_name, row, seed))
    try:
        _run(set_name, row, seed, target)
    finally:
        with _LOCK:
            _RUNNING.discard((set_name, row, seed))


def _run(set_name: str, row: str, seed: int, target: Path) -> None:
    folder = run_dir(set_name, row, seed)
    cmd = command(set_name, row, seed)
    resume = ["--resume", "latest"] if (folder / "checkpoints").is_dir() else []
    if not resume and folder.exists():
        shutil.rmtree(folder)  # a start that died before its first checkpoint: start over
    print(shlex.join(cmd + resume), flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    with open(folder.parent / f"{folder.name}.out", "a") as out:
        code, cpu = run_child(python_command(cmd) + resume, env, out)
    seconds = time.time() - start
    with open(RECORDS / "times.jsonl", "a") as log:  # every attempt, finished or not: the budget
        log.write(json.dumps({"set": set_name, "row": row, "seed": seed, "seconds": round(seconds, 1),
                              "cpu_seconds": round(cpu, 1), "exit": code}) + "\n")
    if code == 0 and (folder / "report" / "report.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        save_teacher(json.loads((folder / "report" / "report.json").read_text()))
        target.write_text(json.dumps(make_record(set_name, row, seed, folder, seconds)) + "\n")
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    print(f"{'done' if code == 0 else f'FAILED ({code})'}: {set_name}/{row} seed {seed} in {seconds / 60:.1f} min", flush=True)


def run_child(cmd: list[str], env: dict, out) -> tuple[int, float]:
    """(exit code, the child's own CPU seconds, user + system). The budget counts CPU time: on a machine other
    work shares, a run's wall time overstates what it used (its one thread waits for a core)."""
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_utime + usage.ru_stime


def jobs_of(set_names: list[str], rows: list[str] | None, seeds: list[int] | None) -> list[tuple[str, str, int]]:
    """Seed-major order, so that an interrupted study has every row at its first seeds first."""
    jobs = []
    for set_name in set_names:
        for row, (_, row_seeds) in SETS[set_name].items():
            if not rows or row in rows:
                jobs += [(set_name, row, s) for s in (seeds if seeds is not None and len(row_seeds) > 1 else row_seeds)]
    return sorted(jobs, key=lambda job: job[2])


def run(args) -> None:
    RECORDS.mkdir(parents=True, exist_ok=True)
    jobs = jobs_of(["table", "coldstart", "long"] if args.set == "all" else [args.set], args.rows, args.seeds)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run_one(*job, limit_hours=args.budget_hours), jobs))


# ---------------------------------------------------------------------------------------------------
# summarize: from docs/study/ alone.

def records(set_name: str, row: str) -> list[dict]:
    folder = RECORDS / set_name
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{slug(row)}-seed*.json"))] if folder.is_dir() else []


def columns(m: dict) -> dict[str, float]:
    g = m["geneval"]
    return {"GenEval": g["overall"], **{t: g[t] for t in TASKS}, "DPG": m["dpg"]["overall"],
            "reward": m.get("reward", float("nan")), "FD": m["distance"]}


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


DIGITS = {"GenEval": 3, "DPG": 1, "reward": 3, "FD": 1}


def pooled_intervals(found: list[dict]) -> dict[str, str]:
    """Student minus teacher on the row's per-prompt scores (same prompts, same noise), with a bootstrap that
    resamples the row's seeds and the prompts together: the seed spread is larger than the prompt noise here."""
    import numpy as np

    from dmdr_cli.evaluate.paired import paired_seed_unit_difference

    teacher = json.loads((RECORDS / "teacher.json").read_text())["teacher"].get("units", {})
    per_seed = [r["student"].get("units", {}) for r in found]
    out = {}
    for name, digits in (("geneval", 3), ("dpg", 1), ("reward", 3)):
        if name not in teacher or not all(name in u for u in per_seed):
            continue
        keys = [k for k in teacher[name] if all(k in u[name] for u in per_seed)]
        value = (lambda side, k: side[k][1]) if name == "geneval" else (lambda side, k: side[k])  # [tag, score] / score
        student = np.array([[value(u[name], k) for k in keys] for u in per_seed])
        strata = [teacher[name][k][0] for k in keys] if name == "geneval" else None
        interval = paired_seed_unit_difference(student, [value(teacher[name], k) for k in keys], strata=strata, seed=0)
        out[name] = interval.format(digits)
    return out


def table(set_name: str) -> str:
    header = ["row", "seeds", "NFE", "GenEval", "single", "two", "count", "colour", "pos", "attr", "DPG",
              "world-clip", "FD", "Δ GenEval vs teacher (95%)", "Δ DPG", "Δ world-clip"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    first = next((r for row in SETS[set_name] for r in records(set_name, row)), None)
    if first is not None:
        cells = columns(first["teacher"])
        lines.append(f"| teacher | - | {2 * first['teacher_steps']} | "
                     + " | ".join(f"{v:.{DIGITS.get(k, 2)}f}" for k, v in cells.items()) + " | - | - | - |")
    for row in SETS[set_name]:
        found = records(set_name, row)
        if not found:
            continue
        per_seed = [columns(r["student"]) for r in found]
        cells = [mean_std([c[k] for c in per_seed], DIGITS.get(k, 2)) for k in per_seed[0]]
        paired = pooled_intervals(found)
        cells += [paired.get(name, "-") for name in ("geneval", "dpg", "reward")]
        lines.append(f"| {row} | {len(found)} | {found[0]['student_steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_at(found: list[dict], step: int, key: str = "val_world_geneval") -> list[float]:
    """Each seed's validation `key` at `step` (seeds that did not validate there are left out)."""
    return [v[key] for r in found for v in r["validation"] if v["step"] == step and key in v]


def mean_at(found: list[dict], step: int, key: str = "val_world_geneval") -> float | None:
    values = validation_at(found, step, key)
    return statistics.mean(values) if values else None


def decline(found: list[dict]) -> tuple[float, float, float]:
    """(V(60), level L = (V(100) + V(120)) / 2, decline D = L - V(60)): V(s) the mean over seeds of
    val_world_geneval at step s, the rule the candidates were judged by (docs/results.md, "Training longer").
    A run validated every 60 steps has no V(100): its level is V(120)."""
    v60 = mean_at(found, 60)
    later = [v for v in (mean_at(found, 100), mean_at(found, 120)) if v is not None]
    level = statistics.mean(later)
    return v60, level, level - v60


# The adopted study's rule (docs/results.md, written before its 480-step runs finished): a curve does not fall
# after the cold start when the mean over seeds of V_seed(s) - V_seed(60) is at least -0.031 at s = 120 and 480,
# twice the standard error validation-prompt noise puts on a 3-seed mean of a difference (0.0188 * 2**0.5 / 3**0.5).
NOT_FALLING = -0.031


def seed_gains(found: list[dict], step: int) -> list[float]:
    """Each seed's val_world_geneval at `step` minus its own at step 60 (seeds that validated at both)."""
    gains = []
    for r in found:
        at = {v["step"]: v["val_world_geneval"] for v in r["validation"]}
        if step in at and 60 in at:
            gains.append(at[step] - at[60])
    return gains


def curve_table(set_name: str, reference: tuple[str, str] | None = None) -> str:
    """Per row: validation world-GenEval at steps 60-120 (mean over seeds), the level and decline of the
    candidates' rule, the empty-canvas share at 60 and 120, and for `candidates` the rule's verdict."""
    rows = ([(f"{reference[1]} (`{reference[0]}` set)", records(*reference))] if reference else []) + \
        [(row, records(set_name, row)) for row in SETS[set_name]]
    rows = [(name, found) for name, found in rows if found and validation_at(found, 60) and validation_at(found, 120)]
    long = any(validation_at(found, 480) for _, found in rows)
    steps = (60, 80, 100, 120) + ((240, 360, 480) if long else ())
    header = ["row", "seeds", *(f"V({k})" for k in steps), "L", "D = L - V(60)", "empty 60", "empty 120"]
    judged = set_name == "adopted"  # the adopted study's rule: per-seed differences to step 60
    if judged:
        header += [f"V(s) - V(60) at {k}, mean (seed std)" for k in (120, 480)] + ["curve (rule)"]
    lines = ["| " + " | ".join(header) + (" | verdict |" if set_name == "candidates" else " |"),
             "|" + " --- |" * (len(header) + (set_name == "candidates"))]
    shipped = dict(rows).get("shipped recipe")
    for name, found in rows:
        v60, level, d = decline(found)
        cells = [name, str(len(found))] + ["-" if mean_at(found, k) is None else f"{mean_at(found, k):.3f}" for k in steps]
        cells += [f"{level:.3f}", f"{d:+.3f}"]
        empty = [validation_at(found, k, "val_world_empty") for k in (60, 120)]
        cells += [f"{statistics.mean(e):.3f}" if e else "-" for e in empty]
        if judged:
            gains = {k: seed_gains(found, k) for k in (120, 480)}
            cells += [f"{statistics.mean(g):+.3f} ({statistics.stdev(g):.3f})" if len(g) > 1 else
                      (f"{g[0]:+.3f}" if g else "-") for g in gains.values()]
            complete = all(len(g) >= 3 for g in gains.values())
            cells.append(("holds" if all(statistics.mean(g) >= NOT_FALLING for g in gains.values()) else "falls")
                         if complete else "-")
        if set_name == "candidates":
            if name == "shipped recipe" or shipped is None:
                cells.append("reference" if name == "shipped recipe" else "-")
            else:
                ok = d >= -0.015 and level >= decline(shipped)[1] + 0.02
                cells.append("passes" if ok else "fails")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(set_name: str, key: str, path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    drawn = False
    for row in SETS[set_name]:
        seeds = [{v["step"]: v for v in r["validation"]} for r in records(set_name, row) if r["validation"]]
        if not seeds:
            continue
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        means = [statistics.mean(s[k][key] for s in seeds) for k in steps]
        ax.plot(steps, means, marker="o", markersize=3, label=f"{row} ({len(seeds)} seeds)")
        if len(seeds) > 1:
            spread = [statistics.stdev(s[k][key] for s in seeds) for k in steps]
            ax.fill_between(steps, [m - d for m, d in zip(means, spread)], [m + d for m, d in zip(means, spread)], alpha=0.15)
        drawn = True
    if drawn:
        ax.set_xlabel("generator step")
        ax.set_ylabel(key.removeprefix("val_") + " (validation prompts)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def attempts() -> list[dict]:
    path = RECORDS / "times.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def fits_budget(set_name: str, limit_hours: float, running: int) -> bool:
    """Whether one more run of `set_name` fits its budget: the attempts of the budget's sets so far, the runs
    in flight and this one each counted at the set's mean finished run (a set's first run counts as nothing:
    no estimate yet)."""
    sets = budget_of(set_name)[1]
    times = [t for t in attempts() if t["set"] in sets]
    same = [cost(t) for t in times if t["set"] == set_name and t["exit"] == 0]
    estimate = statistics.mean(same) if same else 0.0
    return sum(cost(t) for t in times) + (running + 1) * estimate <= limit_hours * 3600


def cost(attempt: dict) -> float:
    """An attempt's core-seconds: its CPU time where recorded, else its wall time at one thread."""
    return attempt.get("cpu_seconds", attempt["seconds"])


def budget() -> str:
    path = RECORDS / "times.jsonl"
    lines = []
    for name, (sets, hours) in BUDGETS.items():
        times = [t for t in attempts() if t["set"] in sets]
        finished = sum(1 for t in times if t["exit"] == 0)
        lines.append(f"Budget used ({name}: {', '.join(sets)}): {sum(cost(t) for t in times) / 3600:.2f} of "
                     f"{hours:g} core-hours by the sum of each attempt's CPU time (its wall time at one torch "
                     f"thread where no CPU time was recorded) "
                     f"({len(times)} attempts, {finished} finished; `{path}`).")
    return "\n\n".join(lines)


def summarize(_args) -> None:
    parts = [BEGIN, ""]
    for set_name in SETS:
        planned = sum(len(seeds) for _, seeds in SETS[set_name].values())
        done = sum(len(records(set_name, row)) for row in SETS[set_name])
        parts.append(f"### Study set `{set_name}` ({done} of {planned} runs logged)\n")
        if not done:
            parts.append("Not run yet.\n")
            continue
        parts.append(table(set_name) + "\n")
        if set_name in CURVE_TABLES:
            parts.append(f"Validation world-GenEval, mean over seeds ({set_name}):\n")
            parts.append(curve_table(set_name, CURVE_TABLES[set_name]) + "\n")
        for key in ("val_world_geneval", "val_world_distance"):
            name = f"{set_name}-{key.removeprefix('val_world_')}.png"
            if plot(set_name, key, PLOTS / name, f"{set_name}: {key.removeprefix('val_')} (mean over seeds, band = std)"):
                parts.append(f"![{set_name}: {key.removeprefix('val_')} against step](ablations/{name})\n")
    parts += [budget(), "", END]
    block = "\n".join(parts)
    print(block)
    text = RESULTS.read_text() if RESULTS.is_file() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## The study\n\n" + block + "\n"
    RESULTS.write_text(text)


def noise(_args) -> None:
    """The validation score's noise against the effects it must tell apart: the binomial standard error of
    world-GenEval (a mean of six task accuracies, n prompts x 1 image each) at 20 and 80 prompts per task, from
    the per-task accuracies the candidates' runs logged, next to the spread of V(s) over training seeds."""
    found = [r for row in CANDIDATES for r in records("candidates", row)]
    values = [v for r in found for v in r["validation"] if v["step"] >= 60]
    if not values:
        print("no candidate records yet")
        return
    accuracy = {t: statistics.mean(v[f"val_world_geneval_{t}"] for v in values) for t in TASKS}
    variance = sum(p * (1 - p) for p in accuracy.values())
    for n in (20, 80):
        print(f"{n} prompts per task: standard error of one validation {variance ** 0.5 / n ** 0.5 / len(TASKS):.4f}")
    spreads = [statistics.stdev(validation_at(records("candidates", row), k)) for row in CANDIDATES
               for k in (60, 80, 100, 120) if len(validation_at(records("candidates", row), k)) > 1]
    if spreads:
        print(f"std of V(s) over training seeds (candidates, steps 60-120, {len(spreads)} row-steps): "
              f"median {statistics.median(spreads):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    go = sub.add_parser("run")
    go.add_argument("set", choices=[*sorted(SETS), "all"])
    go.add_argument("--seeds", type=int, nargs="+", help="instead of each row's own seeds (rows without seeds keep theirs)")
    go.add_argument("--jobs", type=int, default=2)
    go.add_argument("--rows", nargs="*", help="only these rows (names as in the tables)")
    go.add_argument("--budget-hours", type=float, default=None,
                    help="start no run that would take its budget's core-hours past this (default: the set's "
                         "budget in BUDGETS)")
    go.set_defaults(fn=run)
    sub.add_parser("summarize").set_defaults(fn=summarize)
    sub.add_parser("noise", help="the validation's standard error against the seed spread").set_defaults(fn=noise)
    args = parser.parse_args()
    os.chdir(REPO)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
