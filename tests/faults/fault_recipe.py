"""The run every fault test interrupts, and the uninterrupted reference it must end identical to.

4 generator steps on the tiny sd teacher (CPU, fp32): cold start for 2, then DPO, whose frozen reference
is part of the checkpoint (rl_reference) and must survive a resume; a checkpoint after every step.
"""

from __future__ import annotations

from pathlib import Path

from train_helpers import recipe

ENGINES = Path(__file__).resolve().parent.parent / "engines"  # train_helpers, tiny_reward (the RL reward)
STEPS = 4
REWARD = {"name": "custom", "weight": 1.0, "loss": "linear", "options": {"function": "tiny_reward:redness"}}


def write_recipe(folder: Path, teacher: Path) -> Path:
    return recipe(folder, "sd", teacher, folder / "reference", coldstart={"steps": 2},
                  train={"steps": STEPS, "sample_every": 0, "keep_checkpoints": STEPS},
                  rl={"algorithm": "dpo", "rewards": [REWARD], "dpo": {"samples_per_prompt": 2, "beta": 10.0}})
