"""Recipes: every shipped one validates and dry-runs; every kind of bad input is one line and exit 2."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dmdr_cli.cli import app
from dmdr_cli.errors import RecipeError
from dmdr_cli.recipe import load_recipe
from dmdr_cli.recipe.reference import reference_document

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))
runner = CliRunner()


def recipe_files():
    return [p for p in SHIPPED if "accelerate" not in p.parts]


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_shipped_recipe_validates_and_dry_runs(path, tmp_path):
    text = path.read_text()
    assert text.startswith("#"), "each recipe starts with a comment: what, command, hardware"
    header = text.split("\n\n")[0].lower()
    assert "command" in header and ("sized for" in header or "hardware" in header)
    load_recipe(path)
    out = tmp_path / "run"
    stage = "coldstart" if "coldstart" in path.name else "distill"
    # the memory plan traces a real-size step (tests/engines/test_memory_plan.py traces tiny ones)
    res = runner.invoke(app, [stage, str(path), f"output.dir={out}", "--dry-run", "--no-memory"])
    assert res.exit_code == 0, res.output
    assert "plan" in res.output and "family" in res.output
    assert not out.exists(), "a dry run writes nothing"


def test_authors_values_in_shipped_recipes():
    sd3m = load_recipe(ROOT / "recipes/sd3-medium/4step-refl.yaml")
    assert sd3m.student.flow_shift == 3.0 and sd3m.student.finetune == "lora"
    assert (sd3m.student.lora_rank, sd3m.student.lora_alpha) == (64, 128)
    assert [r.weight for r in sd3m.rl.rewards] == [0.3, 0.3] and sd3m.rl.rewards[0].prompt_prefix == "Realistic photo"
    sd35 = load_recipe(ROOT / "recipes/sd35-large/4step-refl.yaml")
    assert sd35.guidance.scale == 4.0 and sd35.student.flow_shift == 5.0 and sd35.rl.rewards[0].weight == 0.1
    sdxl1 = load_recipe(ROOT / "recipes/sdxl/1step-refl.yaml")
    assert sdxl1.student.timesteps == [0.399] and not sdxl1.coldstart.dynadg.enabled and not sdxl1.coldstart.dynars.enabled
    # DMD2's SD1.5 run (experiments/sdv1.5/...guidance1.75_lr1e-5_seed10_dfake10_from_scratch.sh)
    sd15 = load_recipe(ROOT / "recipes/sd15/1step-dmd2.yaml")
    assert (sd15.guidance.scale, sd15.guidance.jitter, sd15.guidance.layout) == (1.75, 0.0, "dmd2")
    assert (sd15.train.lr_generator, sd15.train.lr_guidance, sd15.train.batch_size) == (1e-5, 1e-5, 32)
    assert (sd15.dmd.fake_updates_per_generator_update, sd15.train.grad_clip) == (10, 10.0)
    assert (sd15.dmd.t_min, sd15.dmd.t_max, sd15.student.steps, sd15.student.finetune) == (0.02, 0.98, 1, "full")
    flux = load_recipe(ROOT / "recipes/flux-dev/4step-refl.yaml")
    assert (flux.model.family, flux.student.embedded_guidance, flux.guidance.scale) == ("flux", 3.5, 3.5)
    assert flux.student.flow_shift is None and flux.rl.decoder == "madebyollin/taef1"  # the resolution's shift
    schnell = load_recipe(ROOT / "recipes/flux-schnell/4step-refl.yaml")
    assert (schnell.guidance.scale, schnell.guidance.jitter, schnell.student.embedded_guidance) == (1.0, 0.0, None)


def write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


BASE = {"model": {"family": "sd", "pretrained": "some/hub-id"}}


def fails(tmp_path, args):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_missing_recipe_file(tmp_path):
    msg = fails(tmp_path, ["recipe", "validate", str(tmp_path / "nope.yaml")])
    assert "does not exist" in msg


def test_malformed_yaml_names_the_line(tmp_path):
    p = write(tmp_path, "model:\n  family: sd\n  pretrained: [unclosed\n")
    assert "line" in fails(tmp_path, ["recipe", "validate", str(p)])


def test_unknown_key_suggests_closest(tmp_path):
    p = write(tmp_path, {**BASE, "train": {"stepz": 3}})
    msg = fails(tmp_path, ["recipe", "validate", str(p)])
    assert "train.stepz" in msg and "train.steps" in msg


def test_unknown_key_in_wrong_section_found_elsewhere(tmp_path):
    p = write(tmp_path, {**BASE, "train": {"fake_lora_scale": 2.0}})
    assert "guidance.fake_lora_scale" in fails(tmp_path, ["recipe", "validate", str(p)])


def test_wrong_type_names_path_value_and_expectation(tmp_path):
    p = write(tmp_path, {**BASE, "train": {"steps": "many"}})
    msg = fails(tmp_path, ["recipe", "validate", str(p)])
    assert "train.steps" in msg and "'many'" in msg and "expected" in msg


def test_out_of_range_and_cross_checks(tmp_path):
    p = write(tmp_path, {**BASE, "dmd": {"t_min": 0.5, "t_max": 0.2}})
    assert "t_min" in fails(tmp_path, ["recipe", "validate", str(p)])
    p = write(tmp_path, {**BASE, "student": {"steps": 1}, "rl": {"algorithm": "grpo", "rewards": [{"name": "hps"}]}})
    assert "1-step" in fails(tmp_path, ["recipe", "validate", str(p)])
    p = write(tmp_path, {**BASE, "rl": {"algorithm": "refl"}})
    assert "rl.rewards" in fails(tmp_path, ["recipe", "validate", str(p)])


def test_missing_required_key(tmp_path):
    p = write(tmp_path, {"model": {"family": "sd"}})
    assert "model.pretrained is required" in fails(tmp_path, ["recipe", "validate", str(p)])


def test_overrides_apply_and_are_checked(tmp_path):
    p = write(tmp_path, BASE)
    r = load_recipe(p, ["train.steps=7", "rl.weight=0.25", "student.timesteps=[0.399]", "student.steps=1"])
    assert r.train.steps == 7 and r.rl.weight == 0.25 and r.student.timesteps == [0.399]
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(p, ["train.steps"])
    msg = fails(tmp_path, ["recipe", "validate", str(p), "trian.steps=3"])
    assert "train" in msg


def test_empty_and_non_mapping_recipes(tmp_path):
    assert "empty" in fails(tmp_path, ["recipe", "validate", str(write(tmp_path, ""))])
    assert "mapping" in fails(tmp_path, ["recipe", "validate", str(write(tmp_path, "- a\n- b\n"))])


def test_show_prints_resolved_recipe(tmp_path):
    p = write(tmp_path, BASE)
    res = runner.invoke(app, ["recipe", "show", str(p), "train.steps=11"])
    assert res.exit_code == 0
    shown = yaml.safe_load(res.output)
    assert shown["train"]["steps"] == 11 and shown["dmd"]["fake_updates_per_generator_update"] == 5


def test_reference_doc_matches_schema():
    doc = (ROOT / "docs/recipe-reference.md").read_text()
    assert doc == reference_document(), "regenerate: dmdr recipe reference > docs/recipe-reference.md"


def test_debug_env_shows_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("DMDR_DEBUG", "1")
    res = runner.invoke(app, ["recipe", "validate", str(tmp_path / "nope.yaml")])
    assert res.exit_code != 0 and isinstance(res.exception, RecipeError)


def test_fp16_mixed_precision_is_refused_in_one_line(tmp_path):
    """Without loss scaling the DMD gradient (~grad / numel per element) underflows in fp16."""
    p = write(tmp_path, {**BASE, "train": {"mixed_precision": "fp16"}})
    msg = fails(tmp_path, ["recipe", "validate", str(p)])
    assert "fp16" in msg and "bf16" in msg
