"""Extra time and memory per generator step that each RL algorithm adds, on a tiny fixture, in one run.

Runs `dmdr distill` on the tiny SD fixture (tests/fixtures/tiny_models.py, built into a temp folder)
once per algorithm (none, refl, dpo, grpo), each in its own subprocess so peak RSS is per run, with the
same recipe and a tiny differentiable reward (mean redness). Prints one JSON line per algorithm and the
difference to `none`: median step time over the RL steps, and the process's peak RSS.
Usage: python bench/rl_overhead.py [--steps 6] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(folder: Path, model: Path, algorithm: str, steps: int, batch: int) -> dict:
    out = folder / f"run-{algorithm}"
    recipe = {
        "model": {"family": "sd", "pretrained": str(model), "resolution": 16, "dtype": "fp32"},
        "student": {"steps": 2},
        "guidance": {"scale": 3.0, "lora_rank": 4, "lora_alpha": 4},
        "dmd": {"fake_updates_per_generator_update": 2},
        "data": {"prompts": "builtin:demo"},
        "train": {"steps": steps, "batch_size": batch, "log_every": 1, "sample_every": 0, "checkpoint_every": 0},
        "rl": {"algorithm": algorithm, "start_step": 0,
               "rewards": [] if algorithm == "none" else
               [{"name": "custom", "loss": "linear", "options": {"function": "tiny_reward:redness"}}],
               "dpo": {"samples_per_prompt": 2}, "grpo": {"group_size": 2}},
        "output": {"dir": str(out)},
    }
    path = folder / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = ("import resource, runpy, sys; sys.argv = ['dmdr', 'distill', %r]\n"
            "try:\n    runpy.run_module('dmdr_cli', run_name='__main__')\n"
            "finally:\n    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)") % str(path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'engines'}:{ROOT}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    peak = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    times = sorted(r["step_time"] for r in rows[1:])  # the first step pays warm-up
    return {"algorithm": algorithm, "median_step_s": round(times[len(times) // 2], 4), "peak_rss_mib": round(peak / 1024, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.tiny_models import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny("sd", folder)
        results = [run(folder, model, alg, a.steps, a.batch) for alg in ("none", "refl", "dpo", "grpo")]
    base = results[0]
    for r in results:
        r["extra_step_s"] = round(r["median_step_s"] - base["median_step_s"], 4)
        r["extra_rss_mib"] = round(r["peak_rss_mib"] - base["peak_rss_mib"], 1)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
