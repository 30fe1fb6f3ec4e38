"""SIGKILL at named points of a run (runtime/faults.py), then `--resume latest` until done.

After every kill: each checkpoint folder on disk is complete and equals the uninterrupted run's checkpoint
of the same step bit for bit, `latest` finds one, and the dead run's lock does not block the next run. At
the end the weights are the reference's, bit for bit, and the log reads as one run.

The kills form one chain on one run folder (each resumed run is killed at the next point), so N points
cost N + 1 runs. They are the points that leave distinct states on disk; scripts/soak.py sweeps every
point and random moments.
"""

from __future__ import annotations

import signal

import pytest
from fault_recipe import STEPS
from kill_harness import check_checkpoints, complete_checkpoints, differences
from train_helpers import log_rows

# (fault point, kill on its n-th hit in that process, complete checkpoints it leaves, what is special)
CHAIN = [
    ("checkpoint-file-generator", 1, set(), "step 1's first file: only a .partial folder, the next run starts fresh"),
    ("checkpoint-after-rename", 1, {1}, "step 1 complete, `latest` not written yet"),
    ("checkpoint-before-rename", 1, {1}, "step 2 fully written, not renamed"),
    ("checkpoint-after-latest", 2, {1, 2, 3}, "step 3 is latest, step 1 not pruned yet (keep 2)"),
    ("after-backward", 2, {1, 2, 3}, "step 4 (RL on): second inner step's gradients computed"),
    ("after-optimizer-step", 2, {1, 2, 3}, "step 4's updates applied in memory, nothing saved"),
    ("checkpoint-file-rl_reference", 1, {1, 2, 3}, "writing step 4: the DPO reference"),
    ("checkpoint-optim-fake", 1, {1, 2, 3}, "writing step 4: its last file"),
    ("checkpoint-after-latest", 1, {1, 2, 3, 4}, "the final checkpoint is latest, not pruned: the retry is done"),
]


def distill_args(recipe, run):
    """A run on a folder without a complete checkpoint starts fresh; otherwise --resume latest."""
    resume = ["--resume", "latest"] if complete_checkpoints(run) else []
    return ["distill", recipe, "-o", run, "train.keep_checkpoints=2", *resume]


@pytest.fixture(scope="module")
def chain(forkserver, fault_recipe, reference_run, tmp_path_factory):
    """Run the chain once; each link's outcome, and the final run's."""
    run = tmp_path_factory.mktemp("chain") / "run"
    outcomes = {}
    for i, (point, at, _, _) in enumerate(CHAIN):
        log = run.parent / f"{i}-{point}.log"
        rc = forkserver.run(distill_args(fault_recipe, run), log, env={"DMDR_FAULT": point, "DMDR_FAULT_AT": str(at)})
        lock = run / ".lock"
        outcomes[i] = {"rc": rc, "log": log, "steps": set(complete_checkpoints(run)),
                       "problems": check_checkpoints(run, reference_run),
                       "lock": lock.read_text().strip() if lock.is_file() else ""}
    log = run.parent / "final.log"
    outcomes["final"] = {"rc": forkserver.run(distill_args(fault_recipe, run), log), "log": log, "run": run}
    return outcomes


@pytest.mark.parametrize("link", range(len(CHAIN)), ids=[f"{c[0]}@{c[1]}" for c in CHAIN])
def test_kill_leaves_complete_checkpoints(chain, link):
    point, at, steps, state = CHAIN[link]
    out = chain[link]
    assert out["rc"] == -signal.SIGKILL, f"never reached {point} (exit {out['rc']}): {out['log'].read_text()[-2000:]}"
    assert out["steps"] == steps, f"{state}: expected checkpoints {steps}, found {out['steps']}"
    assert not out["problems"], out["problems"]
    assert out["lock"], "the killed run's pid stays in the lock file; the next run must not be blocked by it"


def test_resumed_run_ends_bit_identical(chain, reference_run):
    final = chain["final"]
    assert final["rc"] == 0, final["log"].read_text()[-3000:]
    run = final["run"]
    assert set(complete_checkpoints(run)) == {STEPS - 1, STEPS}, "keep_checkpoints=2 once the run is done"
    assert not list((run / "checkpoints").glob(".partial-*")), "what the killed runs left is cleaned up"
    last = f"checkpoints/step-{STEPS:06d}"
    assert differences(run / last, reference_run / last) == [], "bit-identical to the uninterrupted run"
    assert [r["step"] for r in log_rows(run)] == list(range(1, STEPS + 1)), "the log reads as one run"
