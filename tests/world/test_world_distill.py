"""A few seconds of the world main job through the CLI: the shipped teacher and world-clip reward load
through the same paths as real models, the cold start and ReFL on world-clip run, and the report table
renders. (The full job, with its teacher-vs-student evaluation, is the README's main command.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from dmdr_cli.cli import app
from dmdr_cli.world.report import TEACHER_FOLDER, is_world_model, markdown, render_table

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "world" / "dmdr.yaml"


def test_world_distill_runs_cold_start_and_refl(tmp_path):
    teacher = tmp_path / "teacher"  # a copy without the recipe that marks a world teacher: no (slow) report
    shutil.copytree(TEACHER_FOLDER, teacher, ignore=shutil.ignore_patterns("eval_cache.json", "train_log.jsonl",
                                                                           "recipe.yaml"))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["distill", str(RECIPE), f"model.pretrained={teacher}", f"output.dir={run}",
                                      "train.steps=2", "coldstart.steps=1", "rl.start_step=1", "train.batch_size=2",
                                      "dmd.fake_updates_per_generator_update=1", "train.sample_every=0",
                                      "train.log_every=1", "data.num_validation=2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["rl"] for r in rows] == [False, True] and 0 < rows[-1]["reward_world-clip"] <= 1
    assert not (run / "report").exists()


def test_world_recipe_is_recognised_and_table_renders():
    from dmdr_cli.recipe import load_recipe

    assert is_world_model(load_recipe(RECIPE))
    assert not is_world_model(load_recipe(ROOT / "recipes" / "sd3-medium" / "4step-refl.yaml"))
    metrics = {"geneval": {"overall": 0.5, "single_object": 1.0}, "dpg": {"overall": 40.0}, "reward": 0.7,
               "distance": 12.0}
    rows = {"teacher (25 steps, CFG 2)": (metrics, 50), "student (4 steps)": (metrics, 4)}
    text = render_table(rows)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "teacher" in text and "0.500" in text and "12.0" in text
    assert "| student (4 steps) | 4 | 0.500 |" in markdown(rows, [{"tag": "x", "prompt": "p", "unit": "x/000"}])


def test_world_validation_logs_the_exact_metrics(tmp_path):
    """A world run's validation adds the final table's metrics, for curves against generator step (the cold
    start ablation plots them); `dmdr coldstart` keeps the run short since it ends without the table."""
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["coldstart", str(RECIPE), f"output.dir={run}", "coldstart.steps=2",
                                      "train.batch_size=2", "dmd.fake_updates_per_generator_update=1",
                                      "train.sample_every=0", "train.validate_every=2", "data.num_validation=2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    validation = next(r for r in rows if "val_world_geneval" in r)
    assert validation["step"] == 2 and 0 <= validation["val_world_geneval"] <= 1
    assert 0 <= validation["val_world_geneval_counting"] <= 1 and 0 <= validation["val_world_dpg"] <= 100
    assert validation["val_world_distance"] > 0 and 0 <= validation["val_world_empty"] <= 1
    assert not (run / "report").exists()


def test_empty_share_counts_images_without_an_accepted_object():
    from dmdr_cli.world.report import empty_share

    records = [{"detections": []}, {"detections": [{"class": "circle"}]}, {"detections": []}, {"detections": [{}]}]
    assert empty_share(records) == 0.5 and empty_share([]) == 0.0
