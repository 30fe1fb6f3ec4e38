"""Is a checkpoint what the run is about to load? Checked from its own recipe.yaml, state.json and the
safetensors headers, before any tensor is read: `--resume`, `--init` (dmdr checkpoints) and `dmdr export`.

A checkpoint that cannot be what dmdr wrote (no state.json object, no step, a tensor file missing or
truncated) is "damaged"; one that is whole but of another run says which recipe keys differ, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import DmdrError
from .files import read_json, read_text, safetensors_header

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}

# Keys that decide which tensors a checkpoint holds and of what shape: a change can never load.
STRUCTURE_KEYS = ("model.family", "student.finetune", "student.lora_rank", "student.lora_alpha",
                  "student.lora_targets", "guidance.layout", "guidance.lora_rank", "guidance.lora_alpha",
                  "guidance.lora_targets")
# Keys whose change loads fine but breaks exact resume (the run is no longer the uninterrupted run). The
# batch counts as the global micro-batch and the accumulation: noise and prompts are keyed by global sample
# index and micro-batch, so 2 processes x batch 1 resume exactly as 1 process x batch 2
# (tests/engines/test_sharding.py), but not as 1 process x batch 1 x accumulation 2.
RESUME_KEYS = ("student.steps", "student.timesteps", "student.sampler", "student.embedded_guidance", "train.seed",
               "dmd.fake_updates_per_generator_update", "train.betas", "train.weight_decay", "ema.decay",
               "ema.start_step", "ode_regression.weight")
BATCH_KEYS = ("train.batch_size", "train.gradient_accumulation")

# The opt-in GAN term's keys break exact resume too, but only where a run has the term, before or after.
GAN_RESUME_KEYS = ("gan.weight", "gan.features", "gan.t_min", "gan.t_max", "data.images")


# What a resume loads from any checkpoint `dmdr distill` wrote; one that lists its files (state.json "files")
# must also have every file it lists (optimizer shards, the RL reference).
RESUME_PARTS = ("generator.safetensors", "fake.safetensors", "optim_generator.json", "optim_fake.json")


@dataclass
class CheckpointInfo:
    path: Path
    state: dict
    recipe: dict | None  # the checkpoint's recipe.yaml as written (resolved, every key present)
    headers: dict[str, dict[str, dict]]  # tensor file stem -> {tensor name: {dtype, shape}}

    @property
    def step(self) -> int:
        return self.state["step"]


FIX = "resume or export from another checkpoint of the run"


def damaged(path: Path, detail: str) -> DmdrError:
    return DmdrError(f"checkpoint {path} is damaged ({detail}): {FIX}")


def inspect(path: Path, needs: tuple[str, ...] = ("generator", "fake")) -> CheckpointInfo:
    """Read a checkpoint's small files and tensor headers; DmdrError("... is damaged ...") if it is not whole."""
    path = Path(path)
    fix = FIX
    try:
        state = read_json(path / "state.json", "", fix=fix)
    except DmdrError as err:
        raise damaged(path, _inner(err.message, path / "state.json")) from None
    if not isinstance(state, dict):
        raise damaged(path, f"state.json holds a {type(state).__name__}, not an object")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise damaged(path, "state.json has no generator step")
    recipe = None
    if (path / "recipe.yaml").is_file():
        try:
            recipe = yaml.safe_load(read_text(path / "recipe.yaml", "", fix=fix))
        except yaml.YAMLError:
            raise damaged(path, "recipe.yaml is not valid YAML") from None
        except DmdrError as err:
            raise damaged(path, _inner(err.message, path / "recipe.yaml")) from None
        if not isinstance(recipe, dict):
            raise damaged(path, "recipe.yaml is not a mapping of sections")
    headers = {}
    for name in needs:
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise damaged(path, f"{file.name} is missing")
    for file in sorted(path.glob("*.safetensors")):
        try:
            headers[file.stem] = safetensors_header(file, "", fix=fix)
        except DmdrError as err:
            raise damaged(path, _inner(err.message, file)) from None
    return CheckpointInfo(path, state, recipe, headers)


def check_whole(info: CheckpointInfo) -> None:
    """Every part a resume loads is there: a checkpoint without an optimizer's state (or its RL reference) would
    otherwise resume with fresh moments for that network, silently."""
    listed = info.state.get("files")
    expected = list(RESUME_PARTS) + [name for name in (listed if isinstance(listed, list) else [])
                                     if isinstance(name, str) and name not in RESUME_PARTS]
    missing = [name for name in expected if not (info.path / name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise damaged(info.path, f"{missing[0]}{more} {'is' if len(missing) == 1 else 'are'} missing")


def _inner(message: str, file: Path) -> str:
    """A files.py message about `file` as the detail of "checkpoint ... is damaged (detail)": the fix dropped,
    the path shortened to the file's name ('PATH is damaged (why): fix' -> 'NAME: why')."""
    text = message.replace(str(file), file.name).rsplit(": " + FIX, 1)[0]
    damaged_part = f"{file.name} is damaged ("
    if text.startswith(damaged_part) and text.endswith(")"):
        return f"{file.name}: {text[len(damaged_part):-1]}"
    return text


def _get(data: dict | None, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _default(dotted: str):
    """A recipe key's schema default (None where it has none)."""
    from ..recipe.schema import Recipe

    model, value = Recipe, None
    for part in dotted.split("."):
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model, value = field.annotation, field.get_default(call_default_factory=True)
    return value


def recipe_differences(saved: dict | None, cfg, keys: tuple[str, ...]) -> list[str]:
    """`key: checkpoint value -> run value` for each of `keys` that differs."""
    if saved is None:
        return []
    run = cfg.model_dump(mode="json")
    out = []
    for key in keys:
        if key.startswith("student.lora") and _get(run, "student.finetune") != "lora" \
                and _get(saved, "student.finetune") != "lora":
            continue  # LoRA settings of a full fine-tune mean nothing
        if key.startswith("guidance.lora") and _get(run, "guidance.layout") == "dmd2" \
                and _get(saved, "guidance.layout") == "dmd2":
            continue
        if key in GAN_RESUME_KEYS and not (_get(run, "gan.weight") or _get(saved, "gan.weight")):
            continue  # GAN settings of runs without the GAN term mean nothing
        a, b = _get(saved, key), _get(run, key)
        if a is None and b == _default(key):
            continue  # a checkpoint written before the key existed ran at its default
        if a != b:
            out.append(f"{key} {_show(a)} -> {_show(b)}")
    return out


def _show(value) -> str:
    return "null" if value is None else (str(value) if not isinstance(value, str) else value)


def global_batch_change(info: CheckpointInfo, cfg, processes: int) -> list[str]:
    """The global batch (batch_size x gradient_accumulation x processes) the checkpoint was written with, if the
    run's differs, or its split into micro-batches: draws are keyed by micro-batch, so 1 process x batch 1 x
    accumulation 2 and 2 processes x batch 1 x accumulation 1 draw other noise for half the samples. A checkpoint
    that does not record its process count compares the per-process keys."""
    saved_processes = info.state.get("processes")
    if info.recipe is None:
        return []
    if not isinstance(saved_processes, int):
        return recipe_differences(info.recipe, cfg, BATCH_KEYS)
    batch, accumulation = _get(info.recipe, "train.batch_size"), _get(info.recipe, "train.gradient_accumulation")
    before = batch * accumulation * saved_processes
    after = cfg.train.batch_size * cfg.train.gradient_accumulation * processes
    if before != after:
        return [f"global batch (train.batch_size x train.gradient_accumulation x processes) {batch} x {accumulation} x "
                f"{saved_processes} = {before} -> {cfg.train.batch_size} x {cfg.train.gradient_accumulation} x "
                f"{processes} = {after}"]
    if accumulation != cfg.train.gradient_accumulation:
        return [f"train.gradient_accumulation {accumulation} -> {cfg.train.gradient_accumulation} at the same global "
                f"batch {after} (noise is drawn per micro-batch)"]
    return []


def check_against_recipe(info: CheckpointInfo, cfg, *, mode: str, allow_change: bool = False,
                         stage_total: int | None = None, processes: int = 1) -> list[str]:
    """Refuse a checkpoint whose recipe cannot load into `cfg`'s networks; for `--resume`, also one whose
    change breaks exact resume unless `allow_change`. Returns the allowed changes (for the run log)."""
    flag = "--resume" if mode == "resume" else "--init"
    family = info.state.get("family")
    if family is not None and family != cfg.model.family:
        raise DmdrError(f"{flag} {info.path} is a checkpoint of a {family} model, but the recipe says model.family: "
                        f"{cfg.model.family}: give a checkpoint of this model")
    fmt = info.state.get("generator_format")
    if fmt in ("full", "lora") and fmt != cfg.student.finetune:
        raise DmdrError(f"{flag} {info.path} holds a {fmt} generator, but the recipe says student.finetune: "
                        f"{cfg.student.finetune}: set student.finetune={fmt}, or start without {flag}")
    structure = recipe_differences(info.recipe, cfg, STRUCTURE_KEYS)
    if structure:
        raise DmdrError(f"{flag} {info.path} does not fit the recipe: {'; '.join(structure)}: use the checkpoint's "
                        f"values, or start without {flag}")
    if mode != "resume":
        return []
    changed = (recipe_differences(info.recipe, cfg, RESUME_KEYS + GAN_RESUME_KEYS)
               + global_batch_change(info, cfg, processes))
    if changed and not allow_change:
        raise DmdrError(f"--resume {info.path}: the recipe changed keys that break exact resume ({'; '.join(changed)}):"
                        f" restore them, or pass --allow-recipe-change to continue anyway (recorded in the log)")
    check_whole(info)
    return changed


def check_tensors(info: CheckpointInfo, expected: dict[str, dict], flag: str) -> None:
    """The headers' tensor names, shapes and dtypes against the built networks' (`expected`: file stem ->
    {name: tensor}); one line naming the first mismatching keys."""
    for stem, tensors in expected.items():
        header = info.headers.get(stem)
        if header is None:
            raise damaged(info.path, f"{stem}.safetensors is missing")
        missing = sorted(set(tensors) - set(header))
        extra = sorted(set(header) - set(tensors))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
            if extra:
                parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
            raise DmdrError(f"{flag} {info.path}: {stem}.safetensors does not match the {stem} network the recipe "
                            f"builds: {' and '.join(parts)} tensors: the checkpoint is of another model or recipe")
        for name in sorted(tensors):
            want, got = tensors[name], header[name]
            if list(want.shape) != got["shape"]:
                raise DmdrError(f"{flag} {info.path}: {stem}.safetensors tensor {name} has shape {got['shape']}, the "
                                f"recipe's network {list(want.shape)}: the checkpoint is of another model or recipe")
            if got["dtype"] not in FLOAT_DTYPES:
                raise damaged(info.path, f"{stem}.safetensors tensor {name} is {got['dtype']}, not floating point")


def check_full_generator(info: CheckpointInfo, teacher_shapes: dict[str, list[int]] | None, teacher: str) -> None:
    """A full generator's tensor names and shapes against the teacher denoiser's safetensors headers (None: the
    teacher is not on local disk, nothing to compare before loading)."""
    if teacher_shapes is None:
        return
    header = info.headers.get("generator", {})
    missing = sorted(set(teacher_shapes) - set(header))
    extra = sorted(set(header) - set(teacher_shapes))
    wrong = sorted(n for n in set(header) & set(teacher_shapes) if header[n]["shape"] != list(teacher_shapes[n]))
    if missing or extra or wrong:
        example = (wrong or missing or extra)[0]
        detail = (f"{example} has shape {header[example]['shape']}, the teacher's {list(teacher_shapes[example])}"
                  if wrong else f"{len(missing)} missing and {len(extra)} unexpected tensors, e.g. {example}")
        raise DmdrError(f"checkpoint {info.path}: generator.safetensors does not fit the teacher {teacher} ({detail}): "
                        f"check model.pretrained in the checkpoint's recipe.yaml")


def check_float_tensors(info: CheckpointInfo, stem: str = "generator") -> None:
    """Every tensor of `stem` is floating point (an export of int64 weights would round them silently)."""
    bad = sorted((n, h["dtype"]) for n, h in info.headers.get(stem, {}).items() if h["dtype"] not in FLOAT_DTYPES)
    if bad:
        raise DmdrError(f"checkpoint {info.path}: {stem}.safetensors holds {len(bad)} non-floating-point tensors "
                        f"(e.g. {bad[0][0]} is {bad[0][1]}): weights are F16, BF16 or F32; it was not written by dmdr "
                        f"or was converted, export from another checkpoint")
