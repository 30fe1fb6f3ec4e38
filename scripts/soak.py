"""Soak test: SIGKILL `dmdr distill` at random moments and at random named fault points, resume until done,
and compare every run with an uninterrupted one. The exhaustive sweep behind tests/faults, which checks a
few chosen kill points in CI.

    python scripts/soak.py --minutes 5                 # bounded by time ...
    python scripts/soak.py --max-kills 200 --seed 3    # ... and by kills, whichever comes first

The run is the one tests/faults uses (tests/faults/fault_recipe.py: tiny sd teacher, cold start then DPO,
CPU fp32) with keep_checkpoints=2, so pruning happens under fire too. Each episode starts a fresh run
folder and repeats: start the run (`--resume latest` once a complete checkpoint exists), kill it, check
the folder. After every kill each complete checkpoint must equal the reference's of the same step bit for
bit and `latest` must find one; when a run finishes, its final weights must equal the reference's.
Prints kills tried and landed, resumes, checkpoint problems and final mismatches; exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "faults"), str(REPO / "tests" / "engines")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

from fault_recipe import ENGINES, STEPS, write_recipe  # noqa: E402
from kill_harness import ForkServer, check_checkpoints, complete_checkpoints, differences  # noqa: E402

# Every named point (runtime/faults.py) with how often a step reaches it: the recipe's 2 inner steps, or
# its one checkpoint (rl_reference only once RL has started: kills there may miss, and the run finishes).
POINTS = {"after-generator-forward": 2, "after-backward": 2, "after-optimizer-step": 2,
          "checkpoint-file-generator": 1, "checkpoint-file-fake": 1, "checkpoint-file-rl_reference": 1,
          "checkpoint-optim-generator": 1, "checkpoint-optim-fake": 1, "checkpoint-before-rename": 1,
          "checkpoint-after-rename": 1, "checkpoint-after-latest": 1}
MAX_TRIES = 40  # kills per episode before the run is let finish (random kills need not make progress)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="stop starting episodes after this long")
    parser.add_argument("--max-kills", type=int, default=500, help="stop after this many kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--named-fraction", type=float, default=0.5,
                        help="share of kills at a named point (the rest at a random moment)")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dmdr-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    deadline = began + 60 * args.minutes

    from fixtures.tiny_models import build_tiny

    server = ForkServer(extra_path=[ENGINES])
    recipe = write_recipe(work, build_tiny("sd", work / "models"))
    reference = work / "reference"
    started = time.monotonic()
    if server.run(["distill", recipe, "-o", reference], work / "reference.log") != 0:
        print(f"the reference run failed: {work / 'reference.log'}")
        return 1
    run_seconds = time.monotonic() - started  # random kill moments are drawn from [0, run_seconds]

    stats, problems = Counter(), []
    points = Counter()
    episode = 0
    try:
        while time.monotonic() < deadline and stats["kills tried"] < args.max_kills:
            episode += 1
            run = work / f"episode-{episode:04d}"
            for attempt in range(MAX_TRIES + 1):
                done = complete_checkpoints(run)
                resume, left = bool(done), max(STEPS - max(done, default=0), 1)
                if attempt:
                    stats["resumes" if resume else "fresh starts"] += 1
                argv = ["distill", recipe, "-o", run, "train.keep_checkpoints=2", *(["--resume", "latest"] * resume)]
                log = run.parent / f"{run.name}.log"
                if attempt == MAX_TRIES or stats["kills tried"] >= args.max_kills:
                    rc = server.run(argv, log)  # let it finish
                elif rng.random() < args.named_fraction:
                    point = rng.choice(list(POINTS))
                    points[point] += 1
                    stats["kills tried"] += 1
                    rc = server.run(argv, log, env={"DMDR_FAULT": point,
                                                    "DMDR_FAULT_AT": str(rng.randint(1, POINTS[point] * left))})
                else:
                    stats["kills tried"] += 1
                    points["random moment"] += 1
                    pid = server.start(argv, log)
                    rc = server.wait(rng.uniform(0, run_seconds * (left + 1) / (STEPS + 1)))  # ~ what is left
                    if rc is None:
                        os.kill(pid, signal.SIGKILL)
                        rc = server.wait(120)
                if rc == -signal.SIGKILL:
                    stats["kills landed"] += 1
                    found = check_checkpoints(run, reference)
                    problems += [f"{run.name} after kill {attempt + 1}: {p}" for p in found]
                    continue
                if rc != 0:
                    problems.append(f"{run.name}: exit {rc} (see {log})")
                break
            final = run / "checkpoints" / f"step-{STEPS:06d}"
            mismatch = differences(final, reference / "checkpoints" / final.name) if final.is_dir() else ["missing"]
            stats["runs finished"] += 1
            if mismatch:
                stats["final mismatches"] += 1
                problems += [f"{run.name} final: {m}" for m in mismatch]
            elif not args.workdir:
                shutil.rmtree(run)
    finally:
        server.close()

    print(f"soak: {(time.monotonic() - began) / 60:.1f} min, {episode} episodes, seed {args.seed}, "
          f"a full run takes {run_seconds:.1f} s")
    print(f"kills tried: {stats['kills tried']} ({', '.join(f'{k} {v}' for k, v in sorted(points.items()))})")
    print(f"kills landed: {stats['kills landed']} (the rest found the run already done or the point not reached)")
    print(f"resumes: {stats['resumes']}, fresh starts after a kill before any checkpoint: {stats['fresh starts']}")
    print(f"checkpoint problems after a kill: {sum(' after kill ' in p for p in problems)}")
    print(f"final mismatches: {stats['final mismatches']} of {stats['runs finished']} runs")
    for problem in problems:
        print(f"  {problem}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
