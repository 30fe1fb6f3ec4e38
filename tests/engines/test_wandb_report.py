"""train.report_to: [tensorboard, wandb] for real in W&B's offline mode: the files it writes hold the logged
scalars, the sample and validation grids as images and the resolved recipe as config, and --resume continues the
same W&B run (same id, later steps)."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image
from fixtures.wandb_records import offline_runs

from train_helpers import invoke, log_rows, ok, recipe

pytest.importorskip("wandb")


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


def wandb_recipe(tmp_path, model, run, steps):
    return recipe(tmp_path, "sd", model, run, coldstart={"steps": 0},
                  train={"steps": steps, "sample_every": 1, "validate_every": 2, "checkpoint_every": 1,
                         "report_to": ["tensorboard", "wandb"], "wandb_project": "tiny"})


def test_wandb_offline_run_holds_scalars_images_and_config_and_resumes(tiny_sd, tmp_path, wandb_offline):
    run = tmp_path / "run"
    ok("distill", wandb_recipe(tmp_path, tiny_sd, run, 2))
    ok("distill", wandb_recipe(tmp_path, tiny_sd, run, 3), "--resume", "latest")
    first, resumed = offline_runs(run)
    assert first["id"] == resumed["id"] == (run / "wandb-run-id").read_text().strip()
    assert first["config"]["train"]["steps"] == 2 and resumed["config"]["train"]["steps"] == 3
    assert first["config"]["model"]["pretrained"] == str(tiny_sd) and first["config"]["train"]["report_to"] == [
        "tensorboard", "wandb"]

    logged = {r["step"]: r for r in log_rows(run) if "fake_loss" in r}
    history = [row for r in (first, resumed) for row in r["history"]]
    scalars = {row["_step"]: row for row in history if "fake_loss" in row}
    assert sorted(scalars) == [1, 2, 3]
    for step, row in logged.items():
        assert scalars[step]["fake_loss"] == pytest.approx(row["fake_loss"], rel=1e-12)
        assert scalars[step]["dmd_loss"] == pytest.approx(row["dmd_loss"], rel=1e-12)
    images = {(row["_step"], key): value for row in history for key, value in row.items()
              if isinstance(value, dict) and value.get("_type") == "image-file"}
    assert {(1, "samples"), (2, "samples"), (2, "validation"), (3, "samples")} <= set(images)
    for (step, key), value in images.items():  # the grid itself, copied into the run's media
        media = list(run.glob(f"wandb/offline-run-*/files/{value['path']}"))
        grid = run / "samples" / (f"step-{step:06d}.png" if key == "samples" else f"validation-{step:06d}.png")
        assert len(media) == 1 and (value["width"], value["height"]) == Image.open(grid).size
        assert hashlib.sha256(media[0].read_bytes()).hexdigest() == value["sha256"]


def test_wandb_missing_is_one_line_before_training(tiny_sd, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    run = tmp_path / "run"
    result = invoke("distill", wandb_recipe(tmp_path, tiny_sd, run, 1))
    assert result.exit_code == 2 and "pip install 'dmdr[wandb]'" in result.output and not run.exists()
