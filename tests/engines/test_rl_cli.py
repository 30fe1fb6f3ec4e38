"""`dmdr distill` with each RL algorithm on the tiny fixtures: the reward terms reach the log, and the
RL gradient reaches the generator and nothing else."""

from __future__ import annotations

import pytest
import torch

from train_helpers import invoke, log_rows, ok, recipe, weights

REWARD = {"name": "custom", "weight": 1.0, "loss": "linear", "options": {"function": "tiny_reward:redness"}}


def rl_recipe(tmp_path, family, folder, run, algorithm, **rl):
    """GRPO rolls out sde transitions, so its student samples with sde (sd3's auto is ode)."""
    return recipe(tmp_path, family, folder, run,
                  coldstart={"steps": 1}, train={"steps": 2, "sample_every": 0},
                  student={"sampler": "sde" if algorithm == "grpo" else "auto"},
                  rl={"algorithm": algorithm, "rewards": [REWARD], **rl})


@pytest.mark.parametrize("family,algorithm", [("sd", "refl"), ("sd3", "refl"), ("sd", "dpo"), ("sd3", "dpo"),
                                              ("sd", "grpo"), ("sd3", "grpo"), ("flux", "refl"), ("flux", "dpo"),
                                              ("flux", "grpo")])
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


def test_dpo_renoises_pairs_only_at_student_steps_the_sampler_feeds_a_renoised_x0(tiny_sd):
    """sde inputs at student steps j > 0 are renoised x0s; step 0 gets pure noise, never renoise(x0, t_0)."""
    import contextlib
    from types import SimpleNamespace

    from dmdr_cli.dmd.networks import build_networks
    from dmdr_cli.dmd.randomness import StepRandomness
    from dmdr_cli.families import FAMILIES, load_family
    from dmdr_cli.recipe import validate
    from dmdr_cli.rl.branch import build_rl_branch

    cfg = validate({"model": {"family": "sd", "pretrained": str(tiny_sd), "resolution": 16, "dtype": "fp32"},
                    "student": {"steps": 2}, "guidance": {"lora_rank": 4}, "train": {"steps": 2},
                    "rl": {"algorithm": "dpo", "rewards": [REWARD], "dpo": {"samples_per_prompt": 2}}})
    fam = load_family(cfg.model)
    nets = build_networks(fam.denoiser, cfg, FAMILIES["sd"])
    branch = build_rl_branch(cfg, torch.device("cpu"), "distill")
    branch.attach(fam, nets)
    times = fam.times_for(cfg.student)
    pair_times = []
    renoise = fam.schedule.renoise

    def spy(x0, t, n):
        if x0.shape[0] == 1:  # the pair's renoise (one prompt); the K = 2 rollouts renoise batch 2
            pair_times.append(float(t[0]))
        return renoise(x0, t, n)

    fam.schedule.renoise = spy
    ctx = SimpleNamespace(student_times=times, sampler="sde", amp=contextlib.nullcontext)
    cond = fam.encode_prompts(["a red circle"])
    for k in range(8):
        rng = StepRandomness(0, k, 0, [0], "cpu")
        branch.loss(ctx, torch.zeros(1, fam.latent_channels, 8, 8), cond, ["a red circle"], rng, k)
    assert pair_times == pytest.approx([times[1]] * 16)  # winner and loser, 8 steps


def test_grpo_refuses_a_student_sampled_with_ode_before_models_load(tiny_sd3, tmp_path):
    """sd3's auto sampler is ode: GRPO would optimise sde transitions of a policy that is never sampled."""
    run = tmp_path / "run"
    res = invoke("distill", rl_recipe(tmp_path, "sd3", tiny_sd3, run, "grpo", grpo={"group_size": 2}),
                 "student.sampler=auto")
    assert res.exit_code == 2 and "student.sampler=sde" in res.output and "auto resolves to ode for sd3" in res.output
    assert not run.exists()


def _grpo_branch(folder, **grpo_and_train):
    """A GRPO branch on the tiny sd3 LoRA student (2 sde steps, groups of 2), its nets and a step context."""
    import contextlib
    from types import SimpleNamespace

    from dmdr_cli.dmd.networks import build_networks
    from dmdr_cli.families import FAMILIES, load_family
    from dmdr_cli.recipe import validate
    from dmdr_cli.rl.branch import build_rl_branch

    train = {"steps": 2, **grpo_and_train.pop("train", {})}
    cfg = validate({"model": {"family": "sd3", "pretrained": str(folder), "resolution": 16, "dtype": "fp32",
                              "max_text_tokens": 8},
                    "student": {"steps": 2, "sampler": "sde", "finetune": "lora", "lora_rank": 4, "lora_alpha": 8},
                    "guidance": {"lora_rank": 4}, "train": train,
                    "rl": {"algorithm": "grpo", "rewards": [REWARD], "grpo": {"group_size": 2, **grpo_and_train}}})
    fam = load_family(cfg.model)
    torch.manual_seed(0)
    nets = build_networks(fam.denoiser, cfg, FAMILIES["sd3"])
    if cfg.train.gradient_checkpointing:
        fam.denoiser.enable_gradient_checkpointing()
    branch = build_rl_branch(cfg, torch.device("cpu"), "distill")
    branch.attach(fam, nets)
    ctx = SimpleNamespace(family=fam, student_times=fam.times_for(cfg.student), amp=contextlib.nullcontext)
    return branch, nets, ctx, fam.encode_prompts(["a red circle"])


def _extra_epoch_gradients(branch, nets, ctx) -> list[list[torch.Tensor]]:
    """The generator gradient each of GRPO's extra epochs applies (the update itself is left out)."""
    grads = []

    def apply_update(loss):
        grads.append([p.grad.clone() for p in nets.generator_params])
        for p in nets.generator_params:
            p.grad = None

    branch.extra_updates(ctx, apply_update)
    return grads


def test_grpo_extra_epochs_with_kl_train_the_generator_adapter_under_gradient_checkpointing(tiny_sd3):
    """With a KL term the reference adapter runs too; backward's recomputation of the checkpointed policy
    forward must still see the generator adapter, so checkpointing leaves the gradient unchanged."""
    from dmdr_cli.dmd.randomness import StepRandomness

    grads = {}
    for checkpointing in (False, True):
        branch, nets, ctx, cond = _grpo_branch(tiny_sd3, epochs=2, kl_weight=1.0,
                                               train={"gradient_checkpointing": checkpointing})
        branch.reference.snapshot()
        with torch.no_grad():  # the policy moved away from its reference
            for p in nets.generator_params:
                p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        branch.loss(ctx, None, cond, ["a red circle"], StepRandomness(0, 0, 0, [0], "cpu"), 0)
        grads[checkpointing] = _extra_epoch_gradients(branch, nets, ctx)[0]
    assert any(g.abs().sum() > 0 for g in grads[False])
    for plain, checkpointed in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-7)


def test_grpo_extra_epochs_use_every_micro_batchs_rollouts(tiny_sd3):
    """gradient_accumulation 2: an extra epoch's gradient is the mean over both micro-batches' rollouts,
    as the first update's is, not the last micro-batch's alone."""
    from dmdr_cli.dmd.randomness import StepRandomness

    branch, nets, ctx, cond = _grpo_branch(tiny_sd3, epochs=2, train={"gradient_accumulation": 2})
    with torch.no_grad():  # a generator adapter that is not a no-op, so every rollout has a gradient
        for p in nets.generator_params:
            p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    def extra_gradient(k, micro_batches):
        for m in micro_batches:  # the rollouts' noise is keyed by the micro-batch (rng objects are stateful)
            branch.loss(ctx, None, cond, ["a red circle"], StepRandomness(0, 0, m, [m], "cpu"), k)
        return _extra_epoch_gradients(branch, nets, ctx)[0]

    both = extra_gradient(0, [0, 1])
    alone = [extra_gradient(1 + m, [m]) for m in range(2)]
    assert not torch.allclose(alone[0][0], alone[1][0]), "the two micro-batches' rollouts differ"
    for g, g0, g1 in zip(both, *alone, strict=True):
        torch.testing.assert_close(g, (g0 + g1) / 2, rtol=1e-4, atol=1e-8)
