"""`dmd.step` pieces on stand-in families: which times the fake-score loss trains at."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from dmdr_cli.dmd.randomness import StepRandomness
from dmdr_cli.dmd.step import fake_score_step_loss
from dmdr_cli.recipe import validate


def fake_loss_times(layout: str, renoise_times=lambda t: t) -> torch.Tensor:
    """The times `fake_score_step_loss` renoises at, for 256 samples with dmd.t_min/t_max = 0.4/0.6, the family
    mapping its draws through `renoise_times`."""
    cfg = validate({"model": {"family": "sd", "pretrained": "unused"}, "train": {"steps": 2},
                    "guidance": {"layout": layout}, "dmd": {"t_min": 0.4, "t_max": 0.6},
                    "coldstart": {"dynars": {"enabled": False}}})
    seen = []
    schedule = SimpleNamespace(renoise=lambda x0, t, n: seen.append(t) or x0, target=lambda x0, n, t: x0)
    family = SimpleNamespace(schedule=schedule, forward=lambda net, x, t, cond: x, fake_score_cond=lambda cond: cond,
                             renoise_times=renoise_times)
    ctx = SimpleNamespace(cfg=cfg, family=family, device=torch.device("cpu"), amp=contextlib.nullcontext,
                          nets=SimpleNamespace(as_fake=lambda: None))
    rng = StepRandomness(0, 3, 0, list(range(256)), "cpu")
    fake_score_step_loss(ctx, torch.zeros(256, 1), None, rng, 3)
    return seen[0]


def test_fake_score_times_dmdr_on_the_renoise_range_dmd2_over_the_whole_range():
    shared = fake_loss_times("shared_lora")
    assert shared.min() >= 0.4 and shared.max() <= 0.6
    dmd2 = fake_loss_times("dmd2")
    assert dmd2.min() >= 0 and dmd2.max() < 1 and dmd2.min() < 0.1 and dmd2.max() > 0.9


def test_fake_score_times_go_through_the_familys_renoise_times():
    """A family with a resolution shift (FLUX) sees its draws shifted, in both layouts; the draws are the same."""
    for layout in ("shared_lora", "dmd2"):
        torch.testing.assert_close(fake_loss_times(layout, lambda t: 3 * t / (1 + 2 * t)),
                                   3 * fake_loss_times(layout) / (1 + 2 * fake_loss_times(layout)))
