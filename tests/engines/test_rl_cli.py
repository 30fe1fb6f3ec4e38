"""`dmdr distill` with each RL algorithm on the tiny fixtures: the reward terms reach the log, and the
RL gradient reaches the generator and nothing else."""

from __future__ import annotations

import pytest
import torch

from train_helpers import invoke, log_rows, ok, recipe, weights

REWARD = {"name": "custom", "weight": 1.0, "loss": "linear", "options": {"function": "tiny_reward:redness"}}


def rl_recipe(tmp_path, family, folder, run, algorithm, **rl):
    return recipe(tmp_path, family, folder, run,
                  coldstart={"steps": 1}, train={"steps": 2, "sample_every": 0},
                  rl={"algorithm": algorithm, "rewards": [REWARD], **rl})


@pytest.mark.parametrize("family,algorithm", [("sd", "refl"), ("sd3", "refl"), ("sd", "dpo"), ("sd3", "dpo"),
                                              ("sd", "grpo"), ("sd3", "grpo")])
def test_distill_with_each_rl_algorithm_logs_reward(family, algorithm, request, tmp_path):
    folder = request.getfixturevalue(f"tiny_{family}")
    run = tmp_path / "run"
    extra = {"grpo": {"group_size": 2, "epochs": 2, "kl_weight": 0.1}} if algorithm == "grpo" else {}
    extra = {"dpo": {"samples_per_prompt": 2, "beta": 10.0}} if algorithm == "dpo" else extra
    ok("distill", rl_recipe(tmp_path, family, folder, run, algorithm, **extra))
    rows = log_rows(run)
    assert rows[0]["rl"] is False and rows[-1]["rl"] is True, "RL starts at coldstart.steps"
    assert "reward_custom" in rows[-1] and "rl_loss" in rows[-1] and "rl_loss" not in rows[0]
    assert all(torch.isfinite(torch.tensor(r["generator_loss"])) for r in rows)


def test_refl_gradient_moves_generator_toward_reward(tiny_sd_pixel, tmp_path):
    """Pixel space: the reward's gradient on the image is the gradient on x0, so RL-only training must
    raise redness; with the reward's sign flipped it must fall (the test has teeth)."""
    scores = {}
    for sign in (1.0, -1.0):
        run = tmp_path / f"run{sign}"
        path = recipe(tmp_path, "sd", tiny_sd_pixel, run, coldstart={"steps": 0},
                      dmd={"weight": 0.0}, train={"steps": 6, "sample_every": 0, "lr_generator": 3e-3},
                      rl={"algorithm": "refl", "rewards": [{**REWARD, "weight": sign}]})
        ok("distill", path)
        scores[sign] = [r["reward_custom"] for r in log_rows(run)]
    assert scores[1.0][-1] > scores[1.0][0] and scores[-1.0][-1] < scores[-1.0][0], scores


def test_grpo_refuses_one_step_student(tiny_sd, tmp_path):
    res = invoke("distill", rl_recipe(tmp_path, "sd", tiny_sd, tmp_path / "run", "grpo"), "student.steps=1")
    assert res.exit_code == 2 and "1-step" in res.output
