"""A non-finite loss term (injected with DMDR_INJECT_NAN, runtime/faults.py) skips its update and is counted
in the log; train.max_nonfinite_steps in a row stop the run with exit 2 and one line naming the term, and
the checkpoints written so far stay intact and finite."""

from __future__ import annotations

import pytest
import torch
from cli_output import error_line
from train_helpers import invoke, log_rows, recipe, weights

from dmdr_cli.runtime.checkpoint import latest_in, load_checkpoint

REWARD = {"name": "custom", "weight": 1.0, "loss": "linear", "options": {"function": "tiny_reward:redness"}}


@pytest.mark.parametrize("term,named", [("dmd", "DMD"), ("fake", "fake-score"), ("rl", "RL reward")])
def test_nonfinite_term_is_skipped_counted_and_stops_the_run(term, named, tiny_sd, tmp_path, monkeypatch):
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, coldstart={"steps": 1},
                  train={"steps": 3, "sample_every": 0, "max_nonfinite_steps": 2},
                  rl={"algorithm": "refl", "rewards": [REWARD]})
    monkeypatch.setenv("DMDR_INJECT_NAN", f"{term}:1")  # step 1 trains normally, every later one is poisoned
    res = invoke("distill", path)
    assert res.exit_code == 2, res.output
    line = error_line(res)
    assert line.startswith(f"error: 2 non-finite updates in a row in the {named} term; the last good checkpoint "
                           f"is kept"), line
    latest = latest_in(run)
    assert all(bool(torch.isfinite(t).all()) for sd in load_checkpoint(latest)["tensors"].values() for t in sd.values())
    if term == "fake":  # two fake-score updates per generator step: both of step 2 fail, the run stops in it
        assert latest.name == "step-000001"
        return
    row = log_rows(run)[-1]
    assert (row["step"], row["nonfinite_skipped"], row["generator_skipped"]) == (2, 1, 1), row
    skipped, good = weights(run, 2), weights(run, 1)
    assert all(torch.equal(skipped[k], good[k]) for k in good), "the skipped update left the generator as it was"
