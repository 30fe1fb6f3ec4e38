"""What an export reads: a checkpoint folder, its recipe and state, and the run's evaluation results.

Everything here is cheap (YAML, JSON, file listings): a bad input is refused before any weight loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import DmdrError
from ..recipe import Recipe, to_yaml, validate
from ..runtime import compat
from ..runtime.checkpoint import resolve_checkpoint
from ..runtime.files import read_text

GENERATOR_FILE = "generator.safetensors"
EMA_FILE = "generator_ema.safetensors"  # written by runs with a generator EMA (recipe section `ema`)


@dataclass(frozen=True)
class LoraSpec:
    """The generator LoRA as it was trained: peft's scale is alpha / rank."""

    rank: int
    alpha: float
    targets: list[str]


@dataclass(frozen=True)
class ExportSource:
    checkpoint: Path
    run_dir: Path | None  # the run folder holding checkpoints/, when the checkpoint sits in one
    recipe: Recipe
    state: dict
    lora: LoraSpec | None  # None: the generator is a full denoiser state dict

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))

    @property
    def recipe_yaml(self) -> str:
        return to_yaml(self.recipe)

    @property
    def generator_file(self) -> Path:
        """The weights a user samples and exports: the generator's EMA where the run kept one."""
        ema = self.checkpoint / EMA_FILE
        return ema if ema.is_file() else self.checkpoint / GENERATOR_FILE

    @property
    def uses_ema(self) -> bool:
        return self.generator_file.name == EMA_FILE

    @property
    def teacher_folder(self) -> Path | None:
        """The teacher's local pipeline folder; None for a hub id."""
        path = Path(self.recipe.model.pretrained).expanduser()
        return path if path.is_dir() else None


def open_checkpoint(spec: str | Path) -> ExportSource:
    """A run folder, checkpoint folder or `.../checkpoints/latest` -> the checkpoint's recipe, state and LoRA spec."""
    checkpoint = resolve_checkpoint(str(spec), Path(spec))
    recipe_file = checkpoint / "recipe.yaml"
    if not recipe_file.is_file():
        raise DmdrError(f"checkpoint {checkpoint} has no recipe.yaml: it was not written by `dmdr distill` / "
                        f"`dmdr coldstart`, or the copy is incomplete")
    try:
        data = yaml.safe_load(read_text(recipe_file, fix="the checkpoint is damaged"))
    except yaml.YAMLError as err:
        raise DmdrError(f"{recipe_file} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DmdrError(f"{recipe_file} is not a recipe (a mapping of sections)")
    recipe = validate(data, source=str(recipe_file))
    try:
        state = json.loads(read_text(checkpoint / "state.json", fix="the checkpoint is damaged"))
    except ValueError as err:
        raise DmdrError(f"{checkpoint / 'state.json'} is not valid JSON ({err})") from None
    if not (checkpoint / GENERATOR_FILE).is_file():
        raise DmdrError(f"checkpoint {checkpoint} has no {GENERATOR_FILE}: the copy is incomplete")
    info = compat.inspect(checkpoint, needs=("generator",))  # state.json an object with a step, headers whole
    for stem in ("generator", "generator_ema"):
        if stem in info.headers:
            compat.check_float_tensors(info, stem)
    fmt = state.get("generator_format")
    if fmt not in ("full", "lora"):
        raise DmdrError(f"{checkpoint / 'state.json'}: generator_format is {fmt!r}, expected 'full' or 'lora'")
    family = state.get("family", recipe.model.family)
    if family != recipe.model.family:
        raise DmdrError(f"{checkpoint}: state.json says family {family!r} but recipe.yaml says "
                        f"{recipe.model.family!r}: the checkpoint folder was assembled from two runs")
    if fmt == "full":  # names and shapes against the teacher's own weight headers, before either loads
        from ..families.shapes import denoiser_shapes

        compat.check_full_generator(info, denoiser_shapes(recipe), recipe.model.pretrained)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    return ExportSource(checkpoint=checkpoint, run_dir=run_dir, recipe=recipe, state=state,
                        lora=_lora_spec(state, recipe) if fmt == "lora" else None)


def _lora_spec(state: dict, recipe: Recipe) -> LoraSpec:
    """state.json records what was trained; the recipe's student section fills in what it lacks.

    Empty targets mean the family's default `generator_lora_targets`.
    """
    from ..families import family_class

    saved = state.get("generator_lora") or {}
    student = recipe.student
    default = family_class(recipe.model.family).generator_lora_targets
    targets = list(saved.get("targets") or student.lora_targets or default)
    return LoraSpec(rank=int(saved.get("rank", student.lora_rank)), alpha=float(saved.get("alpha", student.lora_alpha)),
                    targets=targets)


def evaluation_results(run_dir: Path | None) -> dict[str, dict[str, float]]:
    """Numbers recorded by `dmdr evaluate` in the run's eval/*.json: {file stem: {dotted key: value}}.

    The files are read leniently (they are optional decoration for the model card): unreadable files and
    non-numeric entries are skipped, nested mappings flattened to dotted keys.
    """
    if run_dir is None or not (run_dir / "eval").is_dir():
        return {}
    results = {}
    for file in sorted((run_dir / "eval").glob("*.json")):
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        numbers = dict(_numeric_leaves(data))
        if numbers:
            results[file.stem] = numbers
    return results


def _numeric_leaves(data, prefix: str = ""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _numeric_leaves(value, f"{prefix}{key}.")
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield prefix[:-1], float(data)
