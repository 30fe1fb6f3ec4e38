"""Run benches plug into training without engine changes: a dummy bench registered from outside is asked for
its prompts, scores every validation and writes its end-of-run report; the shapes world uses the same path."""

from __future__ import annotations

from pathlib import Path

from dmdr_cli.evaluate import plugins
from train_helpers import log_rows, ok, recipe

ROOT = Path(__file__).resolve().parents[2]


class DummyBench:
    name = "dummy"
    calls: list[str] = []

    def __init__(self, stage: str):
        self.stage = stage

    def prompts(self) -> list[str]:
        return ["a prompt only the dummy bench asks for"]

    def validation_metrics(self, ctx, encode) -> dict:
        cond = encode(self.prompts())  # encoded with the run's prompts
        assert cond.batch_size == 1
        DummyBench.calls.append("validation")
        return {"val_dummy": 0.25}

    def final_report(self, ctx, encode, run_dir: Path, console) -> dict:
        DummyBench.calls.append(f"report:{self.stage}")
        (run_dir / "dummy_report.txt").write_text(f"{len(ctx.student_times)} student steps\n")
        return {"ok": True}


def test_a_registered_bench_is_used_by_training(tiny_sd, tmp_path):
    DummyBench.calls = []
    plugins.register_run_bench("dummy", lambda cfg, stage: DummyBench(stage))
    try:
        run = tmp_path / "run"
        ok("distill", recipe(tmp_path, "sd", tiny_sd, run, train={"steps": 2, "validate_every": 2}))
    finally:
        plugins.unregister_run_bench("dummy")
    assert DummyBench.calls == ["validation", "report:distill"]
    assert next(r for r in log_rows(run) if "val_dummy" in r)["val_dummy"] == 0.25
    assert (run / "dummy_report.txt").read_text() == "2 student steps\n"


def test_the_world_registers_through_the_same_interface():
    from dmdr_cli.recipe import load_recipe
    from dmdr_cli.world.report import WorldRunBench

    world = load_recipe(ROOT / "recipes" / "world" / "dmdr.yaml")
    benches = plugins.run_benches(world, "distill")
    assert [type(b) for b in benches] == [WorldRunBench]
    assert len(benches[0].prompts()) == 168 + 1392  # validation set, then the evaluation set
    assert len(plugins.run_benches(world, "coldstart")[0].prompts()) == 168  # no end-of-run report there
    assert plugins.run_benches(load_recipe(ROOT / "recipes" / "sd3-medium" / "4step-refl.yaml"), "distill") == []
    assert "world" not in (ROOT / "dmdr_cli" / "engines" / "train.py").read_text().replace("world_size", "")
