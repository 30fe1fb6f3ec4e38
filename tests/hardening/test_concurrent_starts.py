"""Two runs in one folder: 8 `dmdr distill` processes started at the same moment into one new run folder.

Exactly one proceeds (exit 0, its checkpoints and log whole, written by it alone); every other exits 2 with one
line, refused by the live run's lock or, when it reached the lock after the winner had finished, by the
"already holds a run" check made again under the lock. Before that check was atomic, a late second run
passed the early check, loaded its models while the first finished, then took the freed lock and
overwrote the first run's checkpoints and log. So some of the processes are held between their early checks
and the lock until the first run is done: they must be refused too.

CI runs one round (ROUNDS); `DMDR_CONCURRENT_ROUNDS=20` repeats it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import log_rows, recipe

REPO = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("concurrent_starts.py")
PROCESSES = 8
HELD = 3  # of them held after their early checks until the first run has finished (see concurrent_starts.py)
ROUNDS = int(os.environ.get("DMDR_CONCURRENT_ROUNDS", "1"))
REFUSALS = ("is in use by another dmdr run", "already holds a run")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_exactly_one_of_many_concurrent_starts_proceeds(round_, tiny_sd, tmp_path):
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, coldstart={"steps": 1}, train={"steps": 2, "sample_every": 0})
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HELPER), str(path), str(run), str(logs), str(PROCESSES), str(HELD)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    texts = [(logs / f"{i}.log").read_text() for i in range(PROCESSES)]
    assert sorted(codes) == [0] + [2] * (PROCESSES - 1), f"exit codes {codes}: " + "\n---\n".join(
        t[-1500:] for t in texts)
    for code, text in zip(codes, texts):
        if code == 2:
            errors = [line for line in text.splitlines() if line.strip() and "\r" not in line and "error" in line]
            assert len(errors) == 1 and errors[0].startswith("error: output folder "), text[-1500:]
            assert any(reason in errors[0] for reason in REFUSALS), errors[0]
            assert "Traceback" not in text
    assert [r["step"] for r in log_rows(run)] == [1, 2], "one run's log, written once"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    assert (run / "done.json").is_file()
    assert (run / ".lock").read_text() == "", "the winner released the lock"
