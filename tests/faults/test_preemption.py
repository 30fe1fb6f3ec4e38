"""SIGTERM / SIGINT: the run finishes its step, checkpoints it, exits 143 / 130, releases its folder, and
`--resume latest` continues to the uninterrupted run's weights, bit for bit.

SIGTERM goes to a real `python -m dmdr_cli distill` (the entry point a scheduler runs), which also serves
as the live run a second run into its folder must be refused by; SIGINT goes to a fork-server child.
checkpoint_every=0: the only checkpoint before the end is the one the signal causes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from fault_recipe import ENGINES, STEPS
from kill_harness import REPO, child_env, complete_checkpoints, differences, wait_for_step
from train_helpers import invoke, log_rows

from dmdr_cli.runtime.rundir import RunFolder


def check_resumes_exactly(forkserver, recipe, run, reference, tmp_path):
    (stopped_at,) = complete_checkpoints(run)  # exactly one: the preemption checkpoint
    assert 1 <= stopped_at < STEPS
    RunFolder(run, resume=True).check_free()  # the stopped run released its lock
    log = tmp_path / "resume.log"
    assert forkserver.run(["distill", recipe, "-o", run, "--resume", "latest"], log) == 0, log.read_text()[-3000:]
    final = f"step-{STEPS:06d}"
    assert differences(run / "checkpoints" / final, reference / "checkpoints" / final) == []
    assert [r["step"] for r in log_rows(run)] == list(range(1, STEPS + 1))


def test_sigterm_checkpoints_exits_143_and_resumes_exactly(forkserver, fault_recipe, reference_run, tmp_path):
    run, log = tmp_path / "run", tmp_path / "term.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dmdr_cli", "distill", str(fault_recipe), "-o", str(run),
                                 "train.checkpoint_every=0"], stdout=out, stderr=subprocess.STDOUT,
                                env=child_env([ENGINES]), cwd=REPO)
    try:
        wait_for_step(run, 1, proc.poll, log)
        second = invoke("distill", fault_recipe, "-o", run, "--resume", "latest")
        assert second.exit_code == 2, second.output
        assert f"is in use by another dmdr run (pid {proc.pid})" in second.output
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(300) == 143, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped by SIGTERM at generator step" in log.read_text()
    check_resumes_exactly(forkserver, fault_recipe, run, reference_run, tmp_path)


def test_sigint_checkpoints_exits_130_and_resumes_exactly(forkserver, fault_recipe, reference_run, tmp_path):
    run, log = tmp_path / "run", tmp_path / "int.log"
    pid = forkserver.start(["distill", fault_recipe, "-o", run, "train.checkpoint_every=0"], log)
    wait_for_step(run, 1, lambda: forkserver.wait(0), log)
    os.kill(pid, signal.SIGINT)
    assert forkserver.wait(300) == 130, log.read_text()[-3000:]
    assert "stopped by SIGINT at generator step" in log.read_text()
    check_resumes_exactly(forkserver, fault_recipe, run, reference_run, tmp_path)
