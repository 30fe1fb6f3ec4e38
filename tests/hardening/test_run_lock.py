"""One run per output folder: a live run's lock refuses a second run with a message naming it; a lock
left by a run that died (SIGKILL, crash) blocks nothing, also where the filesystem has no flock and
only the recorded pid tells."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dmdr_cli.errors import DmdrError
from dmdr_cli.runtime import rundir
from dmdr_cli.runtime.rundir import RunFolder

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from pathlib import Path; from dmdr_cli.runtime.rundir import RunFolder; "
        "RunFolder(Path(sys.argv[1]), resume=False).open('x: 1', is_main=True); print('locked', flush=True); "
        "time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/run's lock (a RunFolder, as a run takes it; no torch import)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_live_run_refuses_a_second_and_its_death_frees_the_folder(holder, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DmdrError, match=rf"output folder {run} is in use by another dmdr run \(pid {holder.pid}\)"):
        RunFolder(run, resume=True)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid), "the dead run's pid is still recorded"
    folder = RunFolder(run, resume=True)  # and blocks nothing
    folder.open("x: 1\n", is_main=True)
    assert (run / ".lock").read_text().strip() == str(os.getpid())
    folder.close()
    assert (run / ".lock").read_text() == "", "a finished run leaves an empty lock file"


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "fcntl", None)
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}\n")
    folder = RunFolder(run, resume=True)  # a crashed run's pid: taken over
    folder.open("x: 1\n", is_main=True)
    folder.close()
    (run / ".lock").write_text("1\n")  # pid 1 is alive
    with pytest.raises(DmdrError, match=r"in use by another dmdr run \(pid 1\)"):
        RunFolder(run, resume=True)
