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


def test_validation_logs_reward_and_tracks_best(tiny_sd, tmp_path):
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, coldstart={"steps": 1},
                  train={"steps": 3, "sample_every": 0, "validate_every": 1, "keep_checkpoints": 1},
                  rl={"algorithm": "refl", "rewards": [REWARD]})
    ok("distill", path)
    rows = [r for r in log_rows(run) if "val_custom" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    best_step = max(rows, key=lambda r: r["val_reward_weighted"])["step"]
    best = (run / "checkpoints" / "best").read_text().strip()
    assert best == f"step-{best_step:06d}" and (run / "checkpoints" / best / "state.json").is_file()
    assert (run / "samples" / "validation-000003.png").is_file()


def test_refl_gradient_reaches_only_the_generator(tiny_sd):
    """One ReFL backward: generator weights get gradients; teacher, guidance LoRA and reward get none."""
    from dmdr_cli.dmd.networks import build_networks
    from dmdr_cli.families import FAMILIES, load_family
    from dmdr_cli.recipe import validate
    from dmdr_cli.rl.branch import build_rl_branch

    cfg = validate({"model": {"family": "sd", "pretrained": str(tiny_sd), "resolution": 16, "dtype": "fp32"},
                    "guidance": {"lora_rank": 4}, "train": {"steps": 2},
                    "rl": {"algorithm": "refl", "rewards": [REWARD]}})
    fam = load_family(cfg.model)
    nets = build_networks(fam.denoiser, cfg, FAMILIES["sd"])
    branch = build_rl_branch(cfg, torch.device("cpu"), "distill")
    branch.attach(fam, nets)
    cond = fam.encode_prompts(["a red circle", "a cat"])
    x = torch.randn(2, fam.latent_channels, 8, 8)
    x0 = fam.predict_x0(nets.as_generator(), x, torch.full((2,), 0.999), cond)
    loss, _ = branch.loss(None, x0, cond, ["a red circle", "a cat"], None, 0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets.generator_params)
    assert all(p.grad is None for p in nets.fake_params)
    assert all(p.grad is None for n, p in nets.guidance.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for p in fam.components.vae.parameters())
