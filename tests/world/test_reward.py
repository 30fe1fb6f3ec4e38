"""world-clip: the contrastive loss against its definition, the reward's call contract (shapes, units,
gradients to the pixels), its registration with the reward registry, a tiny training run through the
CLI, and the blind-spot probes' distractors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dmdr_cli.cli import app
from dmdr_cli.errors import DmdrError, RecipeError
from dmdr_cli.recipe.schema import RewardSpec
from dmdr_cli.rewards import REWARDS, build_reward
from dmdr_cli.world.prompts import task_pool
from dmdr_cli.world.reward import WorldClipReward
from dmdr_cli.world.reward_model import WorldClip, WorldClipConfig
from dmdr_cli.world.reward_probe import distractor_includes
from dmdr_cli.world.reward_train import contrastive_loss, degrade, null_canvases

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/world/reward.yaml"
runner = CliRunner()
TINY = WorldClipConfig(resolution=24, image_channels=[8, 16], embed_dim=8, text_width=16, text_layers=1,
                       text_heads=2, max_tokens=64, default_margin=0.5)


@pytest.fixture(scope="module")
def tiny_reward_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("world-clip") / "reward"
    WorldClip(TINY, seed=0).save(folder)
    return folder


def test_contrastive_loss_matches_its_definition_with_repeated_prompts():
    torch.manual_seed(0)
    images, texts = torch.randn(3, 4), torch.randn(2, 4)
    prompt_index = torch.tensor([0, 1, 0])  # images 0 and 2 share prompt 0
    scale = torch.tensor(math.log(10.0))
    logits = 10 * torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T
    image_to_text = -sum(logits[i].log_softmax(0)[prompt_index[i]] for i in range(3)) / 3
    text_probs = logits.T.softmax(dim=1)
    text_to_image = -(torch.log(text_probs[0, 0] + text_probs[0, 2]) + torch.log(text_probs[1, 1])) / 2
    expected = (image_to_text + text_to_image) / 2
    assert contrastive_loss(images, texts, prompt_index, scale) == pytest.approx(expected.item(), rel=1e-5)


def test_a_null_canvas_is_a_negative_of_every_text_and_no_text_s_positive():
    """One text, its image (logit a) and a null canvas (logit b): image -> text has one class (loss 0), text ->
    image is -log(e^a / (e^a + e^b)) = softplus(b - a); the symmetric loss is half of it."""
    text = torch.tensor([[1.0, 0.0]])
    image, null = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.8, 0.6]])
    scale = torch.tensor(math.log(10.0))
    loss = contrastive_loss(torch.cat([image, null]), text, torch.tensor([0]), scale)
    assert float(loss) == pytest.approx(0.5 * math.log1p(math.exp(10 * 0.8 - 10 * 0.6)), rel=1e-6)
    assert float(contrastive_loss(image, text, torch.tensor([0]), scale)) == pytest.approx(0.0, abs=1e-7)


def test_null_canvases_show_the_background_and_at_most_one_small_speck():
    from dmdr_cli.world.scene import BACKGROUND, PALETTE

    images = null_canvases(40, 24, torch.Generator().manual_seed(0))
    pixels = ((images + 1) * 127.5).round().permute(0, 2, 3, 1).reshape(40, -1, 3)
    off = (pixels != torch.tensor(BACKGROUND, dtype=torch.float32)).any(-1)
    counts = off.sum(1)
    assert counts.max() <= 9 and 10 <= int((counts == 0).sum()) <= 30  # about half bare, the rest one 1-3 px speck
    palette = {tuple(float(v) for v in c) for c in PALETTE.values()}
    assert all(tuple(float(v) for v in px) in palette for px in pixels[off])


def test_degrade_keeps_images_in_range_and_changes_them():
    images = torch.rand(4, 3, 24, 24)
    out = degrade(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, images)


def test_reward_scores_are_cosines_with_gradients_to_the_pixels(tiny_reward_folder):
    reward = WorldClipReward.from_pretrained(tiny_reward_folder)
    assert reward.units == "cosine" and reward.default_margin == 0.5
    images = torch.rand(3, 3, 24, 24, requires_grad=True)
    scores = reward(images, ["a photo of a red circle", "a photo of two squares", ""])
    assert scores.shape == (3,) and scores.dtype == torch.float32 and scores.abs().max() <= 1 + 1e-6
    scores.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters()), "a reward is a frozen judge"


def test_reward_accepts_other_resolutions(tiny_reward_folder):
    reward = WorldClipReward.from_pretrained(tiny_reward_folder)
    assert reward(torch.rand(2, 3, 32, 32), ["a photo of a circle"] * 2).shape == (2,)


def test_world_clip_is_registered_and_built_from_a_recipe_entry(tiny_reward_folder):
    assert "world-clip" in REWARDS
    reward = build_reward(RewardSpec(name="world-clip", path=str(tiny_reward_folder)), key="rl.rewards[0]")
    assert isinstance(reward, WorldClipReward) and not reward.training
    with pytest.raises(RecipeError, match=r"rl.rewards\[0\].options: unknown option 'arch'"):
        build_reward(RewardSpec(name="world-clip", path=str(tiny_reward_folder), options={"arch": "x"}),
                     key="rl.rewards[0]")


def test_missing_weights_say_how_to_train_them(tmp_path):
    with pytest.raises(DmdrError, match="dmdr world reward recipes/world/reward.yaml"):
        WorldClipReward.from_pretrained(tmp_path / "nothing-here")


def test_tiny_reward_trains_through_the_cli(tmp_path):
    out = tmp_path / "reward"
    res = runner.invoke(app, [
        "world", "reward", str(RECIPE), f"world.reward.out={out}", "world.reward.steps=3",
        "world.reward.batch_size=8", "world.reward.image_channels=[8, 16]", "world.reward.text_width=16",
        "world.reward.text_layers=1", "world.reward.text_heads=2", "world.reward.probe_prompts=4",
        "world.reward.threads=0", "world.reward.null_fraction=0.25",
    ])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer", "probe.json",
                                               "train_log.jsonl", "recipe.yaml"}
    probes = json.loads((out / "probe.json").read_text())
    assert set(probes) == {"single_object", "two_object", "counting", "colors", "position", "color_attr", "null_canvas"}
    assert probes["position"]["chance"] == 0.5 and probes["counting"]["chance"] == 0.25
    assert probes["null_canvas"]["n"] == 4 and probes["null_canvas"]["chance"] == pytest.approx(1 / 3)
    reward = WorldClipReward.from_pretrained(out)
    assert -1 <= reward.default_margin <= 1
    assert reward(torch.rand(2, 3, 24, 24), ["a photo of a circle", "a photo of a square"]).shape == (2,)


def _prompt(task: str, include: list[dict]) -> str:
    return next(m["prompt"] for m in task_pool(task, 24) if m["include"] == include)


@pytest.mark.parametrize("task, prompt, distractors", [
    ("counting", "a photo of two circles",
     {"a photo of one circle", "a photo of three circles", "a photo of four circles"}),
    ("position", "a photo of a square left of a circle", {"a photo of a square right of a circle"}),
    ("color_attr", "a photo of a red circle and a blue square", {"a photo of a blue circle and a red square"}),
    ("two_object", "a photo of a circle and a square",
     {"a photo of a triangle and a square", "a photo of a circle and a triangle"}),
])
def test_probe_distractors_are_minimal_edits(task, prompt, distractors):
    include = next(m["include"] for m in task_pool(task, 24) if m["prompt"] == prompt)
    assert {_prompt(task, edit) for edit in distractor_includes(task, include, 24)} == distractors


def test_never_overwrites_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    res = runner.invoke(app, ["world", "reward", str(RECIPE), f"world.reward.out={precious}", "world.reward.steps=1"])
    assert res.exit_code == 2 and "choose an empty or new folder" in res.output
    assert (precious / "todo.txt").read_text() == "keep me"
