"""The stabilisers of a long DMD run (issue 20): generator EMA and the regression term onto teacher samples."""

from __future__ import annotations

import pytest
import torch

from train_helpers import checkpoint, invoke, log_rows, ok, recipe, weights

from dmdr_cli.dmd.ema import GeneratorEMA


def test_ema_is_the_closed_form_average_and_swaps_back():
    p = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    ema = GeneratorEMA([p], decay=0.9, start_step=2)
    seen = []
    for step, value in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        p.data.fill_(value)
        ema.update(step)
        seen.append(float(ema.shadow[0][0]))
    # steps 1-2 follow the weights; then 0.9 * 2 + 0.1 * 3 = 2.1, 0.9 * 2.1 + 0.1 * 4 = 2.29
    assert seen == pytest.approx([1.0, 2.0, 2.1, 2.29])
    with ema.swapped():
        assert float(p[0]) == pytest.approx(2.29)
        p.data.copy_(torch.tensor([7.0, 7.0]))  # a load while swapped lands in the average
    assert float(p[0]) == 4.0 and float(ema.shadow[0][1]) == 7.0


def test_ema_run_checkpoints_the_average_resumes_exactly_and_exports_it(tiny_sd, tmp_path):
    ema = {"decay": 0.5, "start_step": 1}
    straight = tmp_path / "straight"
    ok("distill", recipe(tmp_path, "sd", tiny_sd, straight, train={"steps": 4}, ema=ema))
    live = [weights(straight, k) for k in (1, 2, 3, 4)]
    avg = [weights(straight, k, "generator_ema") for k in (1, 2, 3, 4)]
    for name in live[0]:
        assert torch.equal(avg[0][name], live[0][name])  # step 1 <= start_step: the weights themselves
        expected = avg[0][name]
        for k in (1, 2, 3):
            expected = 0.5 * expected + 0.5 * live[k][name]
            torch.testing.assert_close(avg[k][name], expected, rtol=0, atol=1e-6)
    assert any(not torch.equal(avg[3][n], live[3][n]) for n in live[3])

    halves = tmp_path / "halves"
    ok("distill", recipe(tmp_path, "sd", tiny_sd, halves, train={"steps": 2}, ema=ema))
    ok("distill", recipe(tmp_path, "sd", tiny_sd, halves, train={"steps": 4}, ema=ema), "--resume", "latest")
    for name in ("generator", "generator_ema", "fake"):
        a, b = weights(straight, 4, name), weights(halves, 4, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    from dmdr_cli.export.source import open_checkpoint

    assert open_checkpoint(checkpoint(straight, 4)).generator_file.name == "generator_ema.safetensors"
    out = tmp_path / "export"
    ok("export", str(straight), "--format", "safetensors", "--dtype", "fp32", "--out", str(out))
    from safetensors.torch import load_file

    exported = load_file(str(next(out.glob("*.safetensors"))))
    assert all(torch.equal(exported[k], avg[3][k]) for k in avg[3] if k in exported) and set(avg[3]) & set(exported)


def test_turning_the_ema_on_at_resume_is_a_recipe_change(tiny_sd, tmp_path):
    run = tmp_path / "run"
    ok("distill", recipe(tmp_path, "sd", tiny_sd, run, train={"steps": 2}))
    result = invoke("distill", recipe(tmp_path, "sd", tiny_sd, run, train={"steps": 3}, ema={"decay": 0.9}),
                    "--resume", "latest")
    assert result.exit_code == 2 and "ema.decay 0.0 -> 0.9" in result.output


def test_regression_term_pulls_the_student_onto_the_teacher_samples(tiny_sd, tmp_path):
    """DMD off, the term alone: its loss falls; the shared pair cache is reused by a second run and refused by a
    run that would make other pairs."""
    cache = tmp_path / "pairs.safetensors"
    term = {"weight": 1.0, "pairs": 6, "teacher_steps": 3, "seed": 0, "cache": str(cache)}
    run = tmp_path / "run"
    # a 1-step student (t = 0.399, fed pure noise) sees the same rows' kind of input at every step, so the
    # term's loss is comparable across steps (the random tiny teacher's samples at t = 1 are far larger)
    ok("distill", recipe(tmp_path, "sd", tiny_sd, run, ode_regression=term, dmd={"weight": 0.0},
                         student={"steps": 1, "timesteps": [0.399]}, coldstart={"steps": 0},
                         train={"steps": 12, "lr_generator": 3e-3, "checkpoint_every": 0, "sample_every": 0}))
    losses = [r["ode_regression_loss"] for r in log_rows(run) if "ode_regression_loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    assert cache.is_file() and not (run / "ode_pairs.safetensors").exists()
    made = cache.stat().st_mtime_ns

    again = tmp_path / "again"
    ok("distill", recipe(tmp_path, "sd", tiny_sd, again, ode_regression=term, coldstart={"steps": 0},
                         train={"steps": 1, "seed": 5}))
    assert cache.stat().st_mtime_ns == made  # another training seed, the same pairs: read, not made
    other = tmp_path / "other"
    result = invoke("distill", recipe(tmp_path, "sd", tiny_sd, other, ode_regression={**term, "pairs": 7},
                                      coldstart={"steps": 0}, train={"steps": 1}))
    assert result.exit_code == 2 and "made for other pairs" in result.output and "pairs 6 vs 7" in result.output


def test_regression_term_renoises_the_teacher_sample_for_later_student_steps():
    """Student step 0 sees the pair's noise; a later step sees the teacher's sample renoised to its time."""
    from types import SimpleNamespace

    from dmdr_cli.dmd.ode_regression import regression_loss
    from dmdr_cli.dmd.randomness import keyed_generator
    from dmdr_cli.families.schedules import FlowSchedule

    seen = {}

    def predict_x0(net, x_in, t, cond):
        seen["x_in"], seen["t"] = x_in.clone(), t.clone()
        return torch.zeros_like(x_in)

    family = SimpleNamespace(schedule=FlowSchedule(), predict_x0=predict_x0)
    ctx = SimpleNamespace(family=family, device=torch.device("cpu"), student_times=[1.0, 0.5],
                          amp=lambda: torch.autocast("cpu", enabled=False),
                          nets=SimpleNamespace(as_generator=lambda: None),
                          cfg=SimpleNamespace(ode_regression=SimpleNamespace(loss="mse")))
    pairs = {"noise": torch.randn(4, 1, 2, 2), "target": torch.ones(4, 1, 2, 2), "prompt_index": torch.zeros(4, dtype=torch.long)}
    conds = type("C", (), {"__getitem__": lambda self, rows: self, "to": lambda self, d: self})()
    gens = [keyed_generator(0, "t", i) for i in range(4)]
    loss = regression_loss(ctx, pairs, conds, torch.arange(4), gens)
    assert float(loss) == pytest.approx(1.0)  # zeros against ones
    for row in range(4):
        if float(seen["t"][row]) == 1.0:
            torch.testing.assert_close(seen["x_in"][row], pairs["noise"][row])
        else:  # flow renoise at t = 0.5: half the sample plus half the fresh noise
            fresh = (seen["x_in"][row] - 0.5 * pairs["target"][row]) / 0.5
            assert not torch.allclose(seen["x_in"][row], pairs["noise"][row]) and fresh.abs().max() < 6
    assert set(seen["t"].tolist()) == {1.0, 0.5}
