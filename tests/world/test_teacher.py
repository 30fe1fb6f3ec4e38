"""The world teacher: its tokenizer, its schedule, and tiny training runs through the CLI that load back
through the sd family, are deterministic per seed and resume exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dmdr_cli.cli import app
from dmdr_cli.recipe import load_recipe
from dmdr_cli.world.builtin_prompts import training_dense_items
from dmdr_cli.world.prompts import TASKS, task_pool
from dmdr_cli.world.batches import world_batch
from dmdr_cli.world.teacher import learning_rate
from dmdr_cli.world.teacher_model import alphas_cumprod, scheduler_config
from dmdr_cli.world.teacher_text import world_tokenizer

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/world/teacher.yaml"
runner = CliRunner()

TINY = [  # a 24 px teacher small enough to take a few steps in well under a second each
    "world.teacher.batch_size=4", "world.teacher.channels=[8, 16]", "world.teacher.attention_heads=2",
    "world.teacher.text_width=16", "world.teacher.text_heads=2", "world.teacher.dense_fraction=0.5",
    "world.teacher.warmup_steps=1", "world.teacher.checkpoint_every=0", "world.teacher.threads=0",
    "world.teacher.eval_prompts=0",
]


def train_tiny(tmp_path: Path, name: str, *extra: str, resume: bool = False) -> Path:
    export = tmp_path / name
    args = ["world", "teacher", str(RECIPE), *TINY, f"model.pretrained={export}", f"output.dir={tmp_path / (name + '-run')}",
            *extra]
    res = runner.invoke(app, args + (["--resume", "latest"] if resume else []))
    assert res.exit_code == 0, res.output
    return export


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_every_world_word_is_one_token():
    tokenizer = world_tokenizer(64)
    prompts = [m["prompt"] for task in TASKS for m in task_pool(task, 24)]
    prompts += [item["prompt"] for item in training_dense_items()[:200]]
    for prompt in prompts:
        words = re.findall(r"[a-z]+|[,.]", prompt)
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)[1:-1]
        assert [t.removesuffix("</w>") for t in tokens] == words, prompt
    longest = max(len(tokenizer(p).input_ids) for p in prompts)
    assert longest <= load_recipe(RECIPE).world.teacher.max_tokens


def test_unknown_words_still_tokenize_letter_by_letter():
    tokenizer = world_tokenizer(64)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a purple hexagon").input_ids)
    assert tokens[:3] == ["<|startoftext|>", "a</w>", "purple</w>"] and "".join(tokens[3:-1]) == "hexagon</w>"


def test_schedules_are_their_closed_form_products():
    linear = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    scaled = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    np.testing.assert_allclose(alphas_cumprod("linear").double().numpy(), linear, rtol=1e-5)
    np.testing.assert_allclose(alphas_cumprod("scaled_linear").double().numpy(), scaled, rtol=1e-5)
    # the signal left at t = 999, which divides an eps model's error in its x0 estimate there
    assert np.sqrt(linear[-1]) == pytest.approx(0.0064, abs=1e-4)
    assert np.sqrt(scaled[-1]) == pytest.approx(0.068, abs=1e-3)
    config = scheduler_config(load_recipe(RECIPE).world.teacher.beta_schedule)
    assert config["beta_schedule"] == "scaled_linear" and config["prediction_type"] == "epsilon"
    assert config["timestep_spacing"] == "trailing" and not config["clip_sample"]


def test_learning_rate_warms_up_then_decays_to_its_floor():
    cfg = load_recipe(RECIPE, ["world.teacher.steps=100", "world.teacher.warmup_steps=10"]).world.teacher
    assert learning_rate(0, cfg) == pytest.approx(cfg.lr / 10)
    assert learning_rate(9, cfg) == pytest.approx(cfg.lr)
    assert learning_rate(100, cfg) == pytest.approx(cfg.lr * cfg.final_lr_fraction)
    assert learning_rate(55, cfg) == pytest.approx(cfg.lr * (cfg.final_lr_fraction + 1) / 2)


def test_world_batch_is_a_function_of_seed_and_step():
    dense = training_dense_items()
    images, prompts = world_batch(7, 10, seed=3, size=24, dense_fraction=0.3, dense_items=dense)
    again, prompts_again = world_batch(7, 10, seed=3, size=24, dense_fraction=0.3, dense_items=dense)
    assert images.shape == (10, 3, 24, 24) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, again) and prompts == prompts_again
    assert sum(p in {d["prompt"] for d in dense} for p in prompts) == 3  # the dense share comes last
    other, _ = world_batch(8, 10, seed=3, size=24, dense_fraction=0.3, dense_items=dense)
    assert not torch.equal(images, other)


def test_a_dense_item_without_a_layout_is_replaced_by_another():
    from dmdr_cli.world.dense import describe
    from dmdr_cli.world.scene import ObjectSpec, Relation, SceneSpec

    # four squares in a row do not fit 16 px: every draw of this item fails, the other always succeeds
    row = SceneSpec(tuple(ObjectSpec("square", c) for c in ("red", "green", "blue", "white")),
                    tuple(Relation(i, "right of", i - 1) for i in range(1, 4)))
    fits = SceneSpec((ObjectSpec("circle", "red"),))
    items = (describe(row, "impossible"), describe(fits, "possible"))
    images, prompts = world_batch(0, 4, seed=0, size=16, dense_fraction=1.0, dense_items=items)
    assert images.shape == (4, 3, 16, 16) and set(prompts) == {items[1]["prompt"]}


def test_tiny_teacher_trains_through_the_cli_and_loads_as_sd(tmp_path):
    from dmdr_cli.families import load_family
    from dmdr_cli.families.base import Guidance
    from dmdr_cli.sampling import teacher_sample

    folder = train_tiny(tmp_path, "teacher", "world.teacher.steps=3", "world.teacher.eval_prompts=6", "sample.steps=2")
    geneval = json.loads((folder / "geneval.json").read_text())
    assert geneval["prompts"] == 6 and geneval["steps"] == 2 and 0 <= geneval["scores"]["overall"] <= 1
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and np.isfinite(log[-1]["loss"])
    assert load_recipe(folder / "recipe.yaml").world.teacher.steps == 3
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["vae"] == [None, None]

    cfg = load_recipe(RECIPE, [f"model.pretrained={folder}"])
    family = load_family(cfg.model)
    assert family.name == "sd" and family.pixel_space and family.latent_channels == 3 and family.resolution == 24
    cond, uncond = family.encode_prompts(["a photo of a red circle"]), family.encode_prompts([""])
    noise = family.noise(1, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = teacher_sample(family, family.components.denoiser, noise, cond, 2, Guidance(2.0, uncond))
    image = family.decode(latents)
    assert image.shape == (1, 3, 24, 24) and 0 <= image.min() and image.max() <= 1


def test_same_seed_same_teacher_other_seed_other_teacher(tmp_path):
    first = unet_weights(train_tiny(tmp_path, "a", "world.teacher.steps=2"))
    second = unet_weights(train_tiny(tmp_path, "b", "world.teacher.steps=2"))
    other = unet_weights(train_tiny(tmp_path, "c", "world.teacher.steps=2", "world.teacher.seed=1"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    straight = unet_weights(train_tiny(tmp_path, "straight", "world.teacher.steps=4"))
    train_tiny(tmp_path, "split", "world.teacher.steps=2")
    split = train_tiny(tmp_path, "split", "world.teacher.steps=4", resume=True)
    resumed = unet_weights(split)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps = [json.loads(line)["step"] for line in (split / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4


def test_second_run_into_the_same_folder_needs_resume(tmp_path):
    train_tiny(tmp_path, "teacher", "world.teacher.steps=1")
    res = runner.invoke(app, ["world", "teacher", str(RECIPE), *TINY, f"model.pretrained={tmp_path / 'teacher'}",
                              f"output.dir={tmp_path / 'teacher-run'}", "world.teacher.steps=1"])
    assert res.exit_code == 2 and "--resume latest" in res.output


def test_bad_resolution_is_one_line(tmp_path):
    res = runner.invoke(app, ["world", "teacher", str(RECIPE), "model.resolution=20",
                              f"model.pretrained={tmp_path / 't'}", f"output.dir={tmp_path / 'r'}"])
    assert res.exit_code == 2 and "resolution 20" in res.output and not (tmp_path / "r").exists()


def test_never_overwrites_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "my-sd-model"
    precious.mkdir()
    (precious / "model_index.json").write_text("{}")
    res = runner.invoke(app, ["world", "teacher", str(RECIPE), *TINY, f"model.pretrained={precious}",
                              f"output.dir={tmp_path / 'r'}", "world.teacher.steps=1"])
    assert res.exit_code == 2 and "choose an empty or new folder" in res.output
    assert [p.name for p in precious.iterdir()] == ["model_index.json"] and not (tmp_path / "r").exists()
