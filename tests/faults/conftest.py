"""Shared by the kill and preemption tests: one fork server, one recipe, one uninterrupted reference run."""

import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "engines")]

from fault_recipe import ENGINES, write_recipe  # noqa: E402
from kill_harness import ForkServer  # noqa: E402


@pytest.fixture(scope="session")
def forkserver():
    server = ForkServer(extra_path=[ENGINES])  # imports in the background while the fixtures below build
    yield server
    server.close()


@pytest.fixture(scope="session")
def fault_recipe(tiny_sd, tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("faults"), tiny_sd)


@pytest.fixture(scope="session")
def reference_run(forkserver, fault_recipe) -> Path:
    """The uninterrupted run: every step's checkpoint kept, to compare interrupted runs against."""
    run, log = fault_recipe.parent / "reference", fault_recipe.parent / "reference.log"
    assert forkserver.run(["distill", fault_recipe, "-o", run], log) == 0, log.read_text()[-3000:]
    assert (run / "checkpoints" / "step-000003" / "rl_reference.safetensors").is_file(), "RL state is checkpointed"
    return run
