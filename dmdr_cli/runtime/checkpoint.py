"""Checkpoints that are complete or absent, never half-written.

A checkpoint is a folder `checkpoints/step-NNNNNN/`: written under a temporary name, flushed, then
renamed (atomic on POSIX), after which `checkpoints/latest` (a one-line text file, replaced atomically)
points at it. Anything named `.partial-*` is not a checkpoint and is removed by the next save: a kill at
any moment (tests/faults) leaves the previous checkpoint complete and `latest` pointing at one.
Weights and optimizer tensors are safetensors, everything else JSON: nothing in a run's own state is
ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DmdrError
from . import files

PREFIX = "step-"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file atomically (temp file + flush + replace): readers see the old text or the new. A
    failed write removes its temporary file and raises the OSError (save_checkpoint words the message)."""
    files.write_text_atomic(path, text, convert=False)


def write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def as_os_error(err: SafetensorError) -> OSError:
    """safetensors reports a failed write (disk full, permissions) as its own exception type: the OSError it
    wraps, so callers handle every write failure in one place."""
    code = re.search(r"\(os error (\d+)\)", str(err))
    return OSError(int(code[1]), os.strerror(int(code[1]))) if code else OSError(str(err))


@contextlib.contextmanager
def as_os_errors():
    """Inside: a failed safetensors write surfaces as the OSError it wraps."""
    try:
        yield
    except SafetensorError as err:
        raise as_os_error(err) from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with as_os_errors():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
    with open(path, "rb") as f:  # the data is on disk before the folder's rename makes it a checkpoint
        os.fsync(f.fileno())


def _state_to_files(state: dict[int, dict]) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state {parameter index: {name: value}} as tensors (safetensors) and scalars (JSON)."""
    tensors, scalars = {}, {}
    for idx, entries in state.items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{idx}/{name}"] = value
            else:
                scalars[f"{idx}/{name}"] = value
    return tensors, scalars


def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and the rest (JSON)."""
    sd = opt.state_dict()
    tensors, scalars = _state_to_files(sd["state"])
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def shared_partial(run_dir: Path, step: int) -> Path:
    """The folder checkpoint `step` is written in when every rank writes a shard of it (the same on every rank)."""
    return run_dir / "checkpoints" / f".partial-{step_dir_name(step)}-shared"


def start_partial(run_dir: Path, step: int) -> Path:
    """Make `shared_partial` fresh (the main rank, before the others write their shards into it; a leftover
    of a killed attempt is replaced)."""
    partial = shared_partial(run_dir, step)
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    except OSError as e:
        raise DmdrError(f"could not write checkpoint {partial} ({e.strerror or e}): free space or fix permissions and "
                        f"--resume latest") from None
    return partial


def write_optimizer_shard(partial: Path, name: str, opt, rank: int) -> None:
    """This rank's shard of a sharded optimizer's state, in its own files, written in parallel with the other
    ranks': optim_<name>.rank<r>.safetensors (state tensors by global parameter index) and .json (scalars)."""
    from .faults import fault_point
    from .precision import local_shard_state

    tensors, scalars = _state_to_files(local_shard_state(opt))
    try:
        fault_point(f"checkpoint-shard-{name}")
        save_tensors(partial / f"optim_{name}.rank{rank}.safetensors", tensors)
        write_json(partial / f"optim_{name}.rank{rank}.json", {"scalars": scalars})
    except OSError as e:
        raise DmdrError(f"could not write checkpoint shard in {partial} ({e.strerror or e}); the previous checkpoint "
                        f"is intact: free space or fix permissions and --resume latest") from None


def optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from .precision import place_restored_state

    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    built = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # the optimizer as built wins over the checkpoint's param groups: betas and weight decay from the recipe
    # (compat refuses a change unless --allow-recipe-change), fused from this device, lr set every step
    for group, own in zip(opt.param_groups, built):
        group.update(own)
    inner = getattr(opt, "optim", None)
    if inner is not None:  # ZeroRedundancyOptimizer: its local optimizer's groups too
        for group, own in zip(inner.param_groups, built):
            group.update(own)
    place_restored_state(opt)


def save_checkpoint(run_dir: Path, step: int, *, recipe_yaml: str, state: dict,
                    tensors: dict[str, dict[str, torch.Tensor]], optimizers: dict[str, torch.optim.Optimizer],
                    keep: int, fault_hook=None, partial: Path | None = None, shards: int = 1) -> Path:
    """Write checkpoint `step` (files: recipe.yaml, state.json, <name>.safetensors, optim_<name>.*).

    A sharded optimizer (ZeroRedundancyOptimizer) is not gathered: every rank has already written its shard
    into `partial` (`start_partial`, `write_optimizer_shard`); here the main rank adds optim_<name>.json with
    the param groups and the shard count, and the loader reassembles the state for any number of processes."""
    from .precision import global_param_groups, is_sharded

    root = run_dir / "checkpoints"
    final = root / step_dir_name(step)
    tmp = partial if partial is not None else root / f".partial-{step_dir_name(step)}-{os.getpid()}"
    old = root / f".partial-replaced-{final.name}-{os.getpid()}"
    hook = fault_hook or (lambda point: None)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if partial is None:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        (tmp / "recipe.yaml").write_text(recipe_yaml)
        parts = ["recipe.yaml"]  # every file of the checkpoint, listed in state.json: a resume needs them all
        for name, sd in tensors.items():
            save_tensors(tmp / f"{name}.safetensors", sd)
            parts.append(f"{name}.safetensors")
            hook(f"checkpoint-file-{name}")
        for name, opt in optimizers.items():
            if is_sharded(opt):
                write_json(tmp / f"optim_{name}.json", {"param_groups": global_param_groups(opt), "scalars": {},
                                                        "shards": shards})
                parts += [f"optim_{name}.rank{r}.{ext}" for r in range(shards) for ext in ("safetensors", "json")]
            else:
                t, meta = optimizer_to_files(opt)
                save_tensors(tmp / f"optim_{name}.safetensors", t)
                write_json(tmp / f"optim_{name}.json", meta)
                parts.append(f"optim_{name}.safetensors")
            parts.append(f"optim_{name}.json")
            hook(f"checkpoint-optim-{name}")
        write_json(tmp / "state.json", {**state, "step": step, "files": sorted(parts)})
        _fsync_dir(tmp)
        hook("checkpoint-before-rename")
        # A folder of this step from an abandoned attempt (written, then killed before `latest` moved) is
        # renamed aside before it is deleted: a kill mid-deletion must not leave a step folder that still
        # has its state.json but lost weights.
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(root)
        hook("checkpoint-after-rename")
        write_text_atomic(root / "latest", final.name + "\n")
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            with contextlib.suppress(OSError):
                os.rename(old, final)
        raise DmdrError(f"could not write checkpoint {final} ({e.strerror or e}); the previous checkpoint is intact: "
                        f"free space or fix permissions and --resume latest") from None
    hook("checkpoint-after-latest")
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints (and `best`), and what killed runs left behind."""
    done = complete_checkpoints(root)
    best = root / "best"
    protected = (root / best.read_text().strip()) if best.is_file() else None
    for old in done[:-keep]:
        if old != protected:  # the best checkpoint by validation outlives the rotation
            # renamed first: a kill during the deletion leaves a `.partial-*` folder, never a step folder
            # that still has its state.json but lost some weights
            doomed = root / f".partial-pruned-{old.name}-{os.getpid()}"
            try:
                os.rename(old, doomed)
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
    for partial in root.glob(".partial-*"):  # left by a killed run
        if not partial.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(partial, ignore_errors=True)


def mark_best(run_dir: Path, step: int, metrics: dict) -> None:
    """Point `checkpoints/best` at checkpoint `step` (written atomically) and record why."""
    root = run_dir / "checkpoints"
    write_text_atomic(root / "best", step_dir_name(step) + "\n")
    write_json(root / "best.json", {"step": step, **metrics})


def complete_checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_checkpoint(spec: str, run_dir: Path) -> Path:
    """`latest` (in the run folder), a run folder, or a checkpoint folder -> a complete checkpoint folder."""
    if spec == "latest":
        return latest_in(run_dir) or _missing(f"no complete checkpoint in {run_dir / 'checkpoints'} to resume from: "
                                              f"drop --resume, or point output.dir at the run")
    p = Path(spec)
    if (p / "state.json").is_file():
        return p
    if p.name == "latest" and p.parent.is_dir():
        return latest_in(p.parent.parent) or _missing(f"{p} names no complete checkpoint")
    if (p / "checkpoints").is_dir():
        return latest_in(p) or _missing(f"run folder {p} has no complete checkpoint")
    return _missing(f"{spec!r} is not a dmdr checkpoint (no state.json): give a run folder, a checkpoint folder or 'latest'")


def latest_in(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").is_file():
            return candidate
    done = complete_checkpoints(root) if root.is_dir() else []
    return done[-1] if done else None


def _missing(msg: str):
    raise DmdrError(msg)


def load_checkpoint(path: Path) -> dict:
    """{"state": state.json, "tensors": {name: dict}, "optim": {name: (tensors, meta)}, "recipe_yaml": str}."""
    try:
        out = {"state": json.loads((path / "state.json").read_text()), "tensors": {}, "optim": {},
               "recipe_yaml": (path / "recipe.yaml").read_text() if (path / "recipe.yaml").exists() else ""}
        for f in path.glob("*.safetensors"):
            if not f.name.startswith("optim_"):
                out["tensors"][f.stem] = load_file(str(f))
        for f in path.glob("optim_*.json"):
            if ".rank" not in f.stem:
                out["optim"][f.stem[len("optim_"):]] = optimizer_files(path, f.stem)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:  # a damaged copy (JSONDecodeError: ValueError)
        raise DmdrError(f"checkpoint {path} is damaged ({_first_line(err)}): resume or export from another "
                        f"checkpoint of the run") from None
    state = out["state"]
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DmdrError(f"checkpoint {path} is damaged (state.json is not an object with a generator step): resume "
                        f"or export from another checkpoint of the run")
    return out


def optimizer_files(path: Path, stem: str) -> tuple[dict[str, torch.Tensor], dict]:
    """One optimizer's (tensors, meta) as optimizer_from_files takes them: from its one file, or reassembled
    from the shards its ranks wrote (a consolidated state dict, loadable by any number of processes)."""
    meta = json.loads((path / f"{stem}.json").read_text())
    shards = meta.get("shards")
    if not shards:
        return load_file(str(path / f"{stem}.safetensors")), meta
    tensors, scalars = {}, {}
    for rank in range(int(shards)):  # a missing shard is an OSError: the checkpoint is damaged
        tensors.update(load_file(str(path / f"{stem}.rank{rank}.safetensors")))
        scalars.update(json.loads((path / f"{stem}.rank{rank}.json").read_text())["scalars"])
    return tensors, {"param_groups": meta["param_groups"], "scalars": scalars}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
