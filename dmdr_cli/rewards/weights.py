"""Finding and reading reward weights: a local file, a local folder, or a Hugging Face hub repo id.

When the weights are absent the user gets one line naming the missing file, where it was looked for,
and where to get it. Pickled checkpoints are read with `torch.load(weights_only=True)`: a reward file
is plain tensors, and refusing anything else keeps a downloaded file from running code.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import ModelLoadError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(source: str) -> bool:
    """`org/name` that is not a local path and not a weights file name."""
    return (not os.path.exists(source) and bool(_HUB_ID.match(source))
            and not source.lower().endswith(WEIGHT_SUFFIXES))


def resolve_file(source: str | None, filenames: str | Iterable[str], *, default_repo: str | None,
                 get_it: str, setting: str) -> Path:
    """The local path of a weights file.

    source: a file, a folder holding one of `filenames`, a hub repo id, or None for `default_repo`.
    filenames: accepted names, preferred first (the first one is the one error messages name).
    get_it: where the user can download it; setting: the recipe key to put its path in (both for errors).
    """
    names = [filenames] if isinstance(filenames, str) else list(filenames)
    source = source if source is not None else default_repo
    if source is None:
        raise ModelLoadError(f"{names[0]} has no default location: download it from {get_it} and pass its path "
                             f"as {setting}")
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise _missing(names, f"folder {str(path)!r}", get_it, setting)
    if looks_like_hub_id(source):
        return _hub_file(source, names, get_it, setting)
    raise ModelLoadError(f"{str(path)!r} not found (expected {names[0]}): download it from {get_it} and pass its "
                         f"path as {setting}")


def resolve_folder(source: str, file_groups: Iterable[Iterable[str]], *, get_it: str, setting: str) -> str:
    """Check that a model folder or hub repo has one file of each group (e.g. a config and a weights
    file) before a `from_pretrained` call reports a missing piece in its own words; returns `source`."""
    path = Path(source).expanduser()
    for names in file_groups:
        names = list(names)
        if path.is_dir():
            if not any((path / name).is_file() for name in names):
                raise _missing(names, f"folder {str(path)!r}", get_it, setting)
        elif looks_like_hub_id(source):
            _hub_file(source, names, get_it, setting)
        else:
            raise ModelLoadError(f"{str(path)!r} is neither a folder nor a Hugging Face repo id: download the model "
                                 f"from {get_it} and pass its folder as {setting}")
    return str(path) if path.is_dir() else source


def _hub_file(repo: str, names: list[str], get_it: str, setting: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in names:
        try:
            return Path(hf_hub_download(repo, name))
        except (OSError, ValueError, EntryNotFoundError):
            continue  # not cached (offline), not in the repo, or the repo is unreachable: try the next name
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    where = f"the Hugging Face repo {repo}" + (" (offline: only the local cache was searched)" if offline else "")
    raise _missing(names, where, get_it, setting)


def _missing(names: list[str], where: str, get_it: str, setting: str) -> ModelLoadError:
    alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    return ModelLoadError(f"{names[0]}{alternatives} not found at {where}: download it from {get_it} and pass its "
                          f"path as {setting}")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a weights-only pickle; unwraps {"state_dict": ...} and DDP's
    "module." prefix (the HPS checkpoints keep their weights under "state_dict")."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        checkpoint = load_file(str(path), device="cpu")
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first_line = str(e).strip().splitlines()[0]
            raise ModelLoadError(f"{path} is not a plain tensor checkpoint: torch.load(weights_only=True) refused it "
                                 f"({first_line}); re-save it as a state dict of tensors") from None
        except (RuntimeError, EOFError) as e:
            raise ModelLoadError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors (found a {type(checkpoint).__name__})")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return dict(checkpoint)


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path,
              architecture: str) -> None:
    """Strict load with a one-line error that says which keys do not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{len(keys)} {what} (e.g. {keys[0]})"
                 for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("keys of another shape", mismatched)) if keys]
        raise ModelLoadError(f"{source} does not fit {architecture}: {'; '.join(parts)}")
    module.load_state_dict(state_dict, strict=True)
