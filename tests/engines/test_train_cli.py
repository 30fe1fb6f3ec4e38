"""`dmdr coldstart` / `dmdr distill` end to end on the tiny sd, sdxl and sd3 fixtures (CPU fp32)."""

from __future__ import annotations

import pytest
import torch

from train_helpers import checkpoint, invoke, log_rows, ok, recipe, weights

LOG_KEYS = {"dmd_loss", "fake_loss", "dmd_grad_norm", "real_lora_scale", "renoise_t_mean", "renoise_t_min",
            "renoise_t_max", "step_time", "generator_grad_norm", "cfg_scale"}


def teacher_denoiser_state(family: str, folder) -> dict:
    from dmdr_cli.families import load_family
    from dmdr_cli.recipe.schema import ModelSection

    fam = load_family(ModelSection(family=family, pretrained=str(folder), resolution=16, dtype="fp32",
                                   **({"max_text_tokens": 8} if family in ("sd3", "flux") else {})),
                      with_text_encoders=False, with_vae=False)
    return {k: v.clone() for k, v in fam.denoiser.state_dict().items()}


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_coldstart_trains_student_and_leaves_teacher(family, request, tmp_path):
    folder = request.getfixturevalue(f"tiny_{family}")
    before = teacher_denoiser_state(family, folder)
    run = tmp_path / "run"
    ok("coldstart", recipe(tmp_path, family, folder, run))
    assert (run / "recipe.yaml").is_file() and (run / "samples" / "step-000002.png").is_file()
    rows = log_rows(run)
    assert [r["step"] for r in rows] == [1, 2] and LOG_KEYS <= set(rows[-1])
    assert rows[0]["real_lora_scale"] == pytest.approx(0.5)  # DynaDG s_r0 at k = 0
    gen = weights(run, 2)
    if family in ("sd3", "flux"):  # LoRA generator: B starts at 0, so any non-zero B is a trained student
        assert any(v.abs().max() > 0 for k, v in gen.items() if "lora_B" in k)
    else:
        assert any(not torch.equal(gen[k], before[k]) for k in before)
    after = teacher_denoiser_state(family, folder)
    assert all(torch.equal(before[k], after[k]) for k in before), "the teacher's files never change"


def test_distill_continues_step_counter_from_coldstart(tiny_sd, tmp_path):
    cold = tmp_path / "cold"
    ok("coldstart", recipe(tmp_path, "sd", tiny_sd, cold))
    run = tmp_path / "distill"
    ok("distill", recipe(tmp_path, "sd", tiny_sd, run), "--init", cold)
    steps = [r["step"] for r in log_rows(run)]
    assert steps == [3], "distill resumes the generator-step counter at the cold start's end"
    assert checkpoint(run, 3).is_dir()


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_exact_resume_is_bit_identical(family, request, tmp_path):
    """flux: a LoRA student told its own guidance value, the fake score another, the teacher a jittered one."""
    folder = request.getfixturevalue(f"tiny_{family}")
    extra = {}
    if family == "flux":
        extra = {"student": {"embedded_guidance": 2.5}, "guidance": {"scale": 3.5, "fake_embedded_guidance": 1.5}}
    straight = tmp_path / "straight"
    ok("distill", recipe(tmp_path, family, folder, straight, train={"steps": 4}, **extra))
    halves = tmp_path / "halves"
    ok("distill", recipe(tmp_path, family, folder, halves, train={"steps": 2}, **extra))
    ok("distill", recipe(tmp_path, family, folder, halves, train={"steps": 4}, **extra), "--resume", "latest")
    for name in ("generator", "fake"):
        a, b = weights(straight, 4, name), weights(halves, 4, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["step"] for r in log_rows(halves)] == [1, 2, 3, 4]


def test_second_run_into_same_folder_refused(tiny_sd, tmp_path):
    run = tmp_path / "run"
    ok("coldstart", recipe(tmp_path, "sd", tiny_sd, run))
    res = invoke("coldstart", recipe(tmp_path, "sd", tiny_sd, run))
    assert res.exit_code == 2 and "--resume latest" in res.output


@pytest.mark.parametrize("case", ["empty_prompts", "missing_model", "wrong_family"])
def test_bad_input_leaves_nothing(case, tiny_sd3, tmp_path):
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd3, run)
    args = []
    if case == "empty_prompts":
        (tmp_path / "prompts.txt").write_text("\n  \n")
        path = recipe(tmp_path, "sd3", tiny_sd3, run)
        (tmp_path / "prompts.txt").write_text("\n  \n")
        args = ["data.prompts=" + str(tmp_path / "prompts.txt")]
    elif case == "missing_model":
        args = [f"model.pretrained={tmp_path / 'nope'}"]
    res = invoke("coldstart", path, *args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith("error:")
    assert not run.exists(), "nothing is written when the input is bad"


def test_ode_regression_warm_start_pulls_one_step_student_to_teacher(tiny_sd, tmp_path):
    """1-step student: the regression loss falls, the pairs are cached, and DMD then starts at step 0."""
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, student={"steps": 1, "timesteps": [0.399]},
                  ode_regression={"steps": 12, "pairs": 4, "teacher_steps": 4, "lr": 3e-3},
                  train={"steps": 1, "sample_every": 0, "log_every": 1}, coldstart={"steps": 1})
    ok("coldstart", path)
    rows = log_rows(run)
    losses = [r["ode_regression_loss"] for r in rows if r.get("phase") == "ode_regression"]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    assert (run / "ode_pairs.safetensors").is_file()
    assert rows[-1]["step"] == 1 and "dmd_loss" in rows[-1]


def test_the_cold_start_runs_at_its_own_learning_rates(tiny_sd, tmp_path):
    """coldstart.lr_*: steps 1-2 (the cold start) at its rates, step 3 at train's; None is train's."""
    def run(name: str, coldstart: dict, lr: float):
        folder = tmp_path / name
        ok("distill", recipe(tmp_path, "sd", tiny_sd, folder, coldstart={"steps": 2, **coldstart},
                             train={"steps": 3, "lr_generator": lr, "lr_guidance": lr}))
        return folder

    default = run("default", {}, 1e-3)
    same = run("same", {"lr_generator": 1e-3, "lr_guidance": 1e-3}, 1e-3)
    fast = run("fast", {"lr_generator": 1e-2, "lr_guidance": 1e-2}, 1e-3)
    fast_then = run("fast-then", {"lr_generator": 1e-2, "lr_guidance": 1e-2}, 5e-3)
    assert [(r["lr_generator"], r["lr_guidance"]) for r in log_rows(fast)] == [(1e-2, 1e-2)] * 2 + [(1e-3, 1e-3)]

    def equal(a, b, step: int) -> bool:
        for name in ("generator", "fake"):
            wa, wb = weights(a, step, name), weights(b, step, name)
            if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
                return False
        return True

    assert equal(default, same, 3) and not equal(default, fast, 1)
    assert equal(fast, fast_then, 2) and not equal(fast, fast_then, 3)  # the stage-2 rate starts at step 3
