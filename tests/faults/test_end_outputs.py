"""A run killed after its last checkpoint, before (or while) it writes what it promises afterwards (the final
sample grid, the run benches' reports), is not complete: `--resume latest` writes what is missing and only
then `done.json`; a run that has its `done.json` has nothing to do.

The kills are real SIGKILLs at fault points (runtime/faults.py) of `dmdr distill` processes of the fork
server; the run-bench report case runs in-process with a registered bench whose report the first run never
reaches (its process "dies" at the same fault point).
"""

from __future__ import annotations

import signal

import pytest
from train_helpers import invoke, ok, recipe

from dmdr_cli.engines import train as train_engine
from dmdr_cli.evaluate import plugins


def _recipe(tmp_path, tiny_sd):
    run = tmp_path / "run"
    # sample_every 3 > steps: the only grid is the one written after the last step
    return run, recipe(tmp_path, "sd", tiny_sd, run, coldstart={"steps": 1}, train={"steps": 2, "sample_every": 3})


@pytest.mark.parametrize("point", ["before-end-outputs", "before-done-marker"])
def test_killed_after_the_last_step_resume_finishes_the_outputs(point, forkserver, tiny_sd, tmp_path):
    run, path = _recipe(tmp_path, tiny_sd)
    grid = run / "samples" / "step-000002.png"
    log = tmp_path / "killed.log"
    rc = forkserver.run(["distill", path], log, env={"DMDR_FAULT": point})
    assert rc == -signal.SIGKILL, log.read_text()[-2000:]
    assert (run / "checkpoints" / "step-000002" / "state.json").is_file(), "the last step's checkpoint is written"
    assert not (run / "done.json").exists()
    assert grid.is_file() == (point == "before-done-marker")

    log = tmp_path / "resumed.log"
    assert forkserver.run(["distill", path, "--resume", "latest"], log) == 0, log.read_text()[-2000:]
    assert "not what it writes afterwards: writing it now" in _words(log)
    assert grid.is_file() and (run / "done.json").is_file()

    log = tmp_path / "again.log"
    assert forkserver.run(["distill", path, "--resume", "latest"], log) == 0, log.read_text()[-2000:]
    assert "the run is complete at generator step 2: nothing to do" in _words(log)


def _words(log) -> str:
    """The log with rich's line wrapping undone."""
    return " ".join(log.read_text().split())


class _Died(BaseException):
    """What a SIGKILL is to the code after it: nothing below runs (no handler catches a BaseException here)."""


class ReportBench:
    name = "report-bench"
    reports = 0

    def __init__(self, stage):
        pass

    def prompts(self):
        return []

    def validation_metrics(self, ctx, encode):
        return {}

    def final_report(self, ctx, encode, run_dir, console):
        ReportBench.reports += 1
        (run_dir / "bench_report.json").write_text('{"ok": true}\n')
        return {"ok": True}


def test_resume_writes_the_run_bench_report_a_killed_run_lost(tiny_sd, tmp_path, monkeypatch):
    run, path = _recipe(tmp_path, tiny_sd)
    real = train_engine.fault_point

    def die_before_end_outputs(name):
        if name == "before-end-outputs":
            raise _Died()
        real(name)

    plugins.register_run_bench(ReportBench.name, lambda cfg, stage: ReportBench(stage))
    try:
        ReportBench.reports = 0
        monkeypatch.setattr(train_engine, "fault_point", die_before_end_outputs)
        with pytest.raises(_Died):  # the test runner passes a BaseException through, as the process would die
            invoke("distill", path)
        assert not (run / "bench_report.json").exists() and not (run / "done.json").exists()
        monkeypatch.setattr(train_engine, "fault_point", real)
        ok("distill", path, "--resume", "latest")
        assert ReportBench.reports == 1 and (run / "bench_report.json").is_file()
        assert (run / "done.json").is_file()
        import json

        done = json.loads((run / "done.json").read_text())
        assert done["step"] == 2 and "report:report-bench" in done["outputs"]
    finally:
        plugins.unregister_run_bench(ReportBench.name)
