"""Data-parallel scaling of `dmdr distill`, measured in one run: step time and bytes communicated per
generator update for 1 and N processes (CPU: gloo; GPUs: NCCL when the machine has them), replicated and
sharded (train.sharding: optimizer), on the tiny SD pipeline of the tests (tests/fixtures/tiny_models.py).

Runs, each `train.steps` generator updates through the real CLI (torchrun for N > 1):
  1 process at batch B, 1 process at batch N x B, N processes at batch B each (none, optimizer).
Prints one JSON line per run (median step_time over the updates after the first, comm_MiB per update and
process from the run's log.jsonl), then the ratios:
  weak scaling efficiency   = t(1 process, B) / t(N processes, B each)       (1.0: N x the throughput)
  strong scaling efficiency = t(1 process, N x B) / (N x t(N processes, B))  (same global batch)
On a 2-core machine shared with other jobs, the ratios say what the machine had to spare; they are not a
property of the code alone. Not a test.

Usage: python bench/scaling.py [--processes 2] [--batch 2] [--steps 4] [--resolution 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def write_recipe(folder: Path, model: Path, run: Path, batch: int, steps: int, resolution: int, sharding: str) -> Path:
    import yaml

    prompts = folder / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle left of a red square\na photo of a cat\n")
    data = {"model": {"family": "sd", "pretrained": str(model), "resolution": resolution, "dtype": "fp32"},
            "student": {"steps": 2, "finetune": "full"},
            "guidance": {"scale": 3.0, "lora_rank": 4, "lora_alpha": 4},
            "dmd": {"fake_updates_per_generator_update": 2},
            "data": {"prompts": str(prompts), "num_validation": 2},
            "train": {"steps": steps, "batch_size": batch, "lr_generator": 1e-4, "lr_guidance": 1e-4, "log_every": 1,
                      "sample_every": 0, "checkpoint_every": 0, "seed": 0, "sharding": sharding},
            "output": {"dir": str(run)}}
    path = folder / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(recipe: Path, processes: int, port: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, "-m", "dmdr_cli", "distill", str(recipe)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(port), "-m", "dmdr_cli", "distill", str(recipe)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def measure(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r]
    times = [r["step_time"] for r in rows[1:]] or [rows[0]["step_time"]]
    return {"step_time_s": round(statistics.median(times), 4),
            "comm_MiB_per_update": round(statistics.median(r.get("comm_mib", 0.0) for r in rows), 3),
            "optimizer_state_MiB_per_process": round(rows[-1]["optimizer_state_mib"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="per process")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from fixtures.tiny_models import build_tiny

    out = a.out or Path(tempfile.mkdtemp(prefix="dmdr-scaling-"))
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny("sd", out / "model")
    n, b = a.processes, a.batch
    configs = [("1p_batch_B", 1, b, "none"), ("1p_batch_NB", 1, n * b, "none"),
               ("Np_none", n, b, "none"), ("Np_optimizer", n, b, "optimizer")]
    results = {}
    for label, procs, batch, sharding in configs:
        run_dir = out / label
        run(write_recipe(out, model, run_dir, batch, a.steps, a.resolution, sharding), procs, free_port())
        results[label] = {"processes": procs, "batch_per_process": batch, "sharding": sharding, **measure(run_dir)}
        print(json.dumps({"bench": "dmdr-scaling", "run": label, **results[label]}), flush=True)
    t1, t1nb = results["1p_batch_B"]["step_time_s"], results["1p_batch_NB"]["step_time_s"]
    summary = {"bench": "dmdr-scaling-summary", "processes": n}
    for mode in ("none", "optimizer"):
        tn = results[f"Np_{mode}"]["step_time_s"]
        summary[f"weak_efficiency_{mode}"] = round(t1 / tn, 3)
        summary[f"strong_efficiency_{mode}"] = round(t1nb / (n * tn), 3)
        summary[f"comm_MiB_per_update_{mode}"] = results[f"Np_{mode}"]["comm_MiB_per_update"]
    summary["optimizer_state_ratio_sharded_to_replicated"] = round(
        results["Np_optimizer"]["optimizer_state_MiB_per_process"] / results["Np_none"]["optimizer_state_MiB_per_process"], 3)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
