"""Recipes and CLI calls for the training-engine tests (tiny fixtures, a few steps, CPU fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from dmdr_cli.cli import app

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red square", "a photo of a cat"]
runner = CliRunner()


def write_prompts(folder: Path) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def recipe(folder: Path, family: str, model_dir: Path, out: Path, **sections) -> Path:
    """A tiny recipe: 16 px, 2-step student, 2 fake updates per generator update, batch 2."""
    data = {
        "model": {"family": family, "pretrained": str(model_dir), "resolution": 16, "dtype": "fp32",
                  **({"max_text_tokens": 8} if family in ("sd3", "flux") else {})},
        "student": {"steps": 2, "finetune": "lora" if family in ("sd3", "flux") else "full", "lora_rank": 4,
                    "lora_alpha": 8},
        "guidance": {"scale": 3.0, "lora_rank": 4, "lora_alpha": 4},
        "dmd": {"fake_updates_per_generator_update": 2},
        "coldstart": {"steps": 2, "dynadg": {"steps": 3}, "dynars": {"steps": 3}},
        "data": {"prompts": str(write_prompts(folder)), "num_validation": 2},
        "train": {"steps": 3, "batch_size": 2, "lr_generator": 1e-3, "lr_guidance": 1e-3, "log_every": 1,
                  "sample_every": 2, "checkpoint_every": 1, "keep_checkpoints": 10, "seed": 3},
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = folder / f"{family}-{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:06d}"


def weights(run: Path, step: int, name: str = "generator") -> dict:
    return load_file(str(checkpoint(run, step) / f"{name}.safetensors"))
