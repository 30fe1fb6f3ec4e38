import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent.parent
sys.path[:0] = [str(TESTS / "engines"), str(TESTS / "export")]  # train_helpers, tiny_reward, trained_students


@pytest.fixture(scope="session")
def exportable(tiny_sd, tmp_path_factory) -> Path:
    """A run folder with one complete checkpoint of a full sd student (built directly, no training)."""
    from trained_students import train

    run = tmp_path_factory.mktemp("exportable") / "run"
    train(run, "sd", tiny_sd, finetune="full")
    return run
