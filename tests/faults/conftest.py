"""Shared by the kill and preemption tests: one fork server, one recipe, one uninterrupted reference run.

The recipe covers both stages and the RL state a resume must restore: 4 generator steps on the tiny sd
teacher, cold start for 2, then DPO (whose frozen reference is checkpointed as rl_reference), a checkpoint
after every step. Every interrupted run must end bit-identical to the reference (CPU, fp32).
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ENGINES = HERE.parent / "engines"
sys.path[:0] = [str(HERE), str(ENGINES)]  # kill_harness; train_helpers and tiny_reward (the RL reward)

from kill_harness import ForkServer  # noqa: E402
from train_helpers import recipe  # noqa: E402

STEPS = 4
REWARD = {"name": "custom", "weight": 1.0, "loss": "linear", "options": {"function": "tiny_reward:redness"}}


@pytest.fixture(scope="session")
def forkserver():
    server = ForkServer(extra_path=[ENGINES])
    yield server
    server.close()


@pytest.fixture(scope="session")
def fault_recipe(tiny_sd, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults")
    return recipe(folder, "sd", tiny_sd, folder / "reference", coldstart={"steps": 2},
                  train={"steps": STEPS, "sample_every": 0, "keep_checkpoints": STEPS},
                  rl={"algorithm": "dpo", "rewards": [REWARD], "dpo": {"samples_per_prompt": 2, "beta": 10.0}})


@pytest.fixture(scope="session")
def reference_run(forkserver, fault_recipe) -> Path:
    """The uninterrupted run: every step's checkpoint kept, to compare interrupted runs against."""
    run = fault_recipe.parent / "reference"
    rc = forkserver.run(["distill", fault_recipe], fault_recipe.parent / "reference.log")
    assert rc == 0, (fault_recipe.parent / "reference.log").read_text()[-3000:]
    assert (run / "checkpoints" / "step-000003" / "rl_reference.safetensors").is_file(), "RL state is checkpointed"
    return run
