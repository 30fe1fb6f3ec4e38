"""Reading prompt sets and ordering them deterministically.

The order of prompts is a pure function of (seed, epoch), and the prompt of global sample i is fixed,
so resuming a run replays exactly the prompts the uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import torch

from .. import builtin_plugins
from ..errors import DmdrError
from ..runtime.files import read_bytes

BUILTIN: dict[str, Callable[[], list[str]]] = {}


def register_builtin(name: str, loader: Callable[[], list[str]]) -> None:
    BUILTIN[name] = loader


def _demo() -> list[str]:
    return _read_lines(Path(__file__).with_name("demo.txt"), "builtin:demo")


register_builtin("demo", _demo)


def read_prompts(spec: str) -> list[str]:
    """`builtin:NAME` or a UTF-8 text file with one prompt per line (blank lines skipped)."""
    if spec.startswith("builtin:"):
        return builtin_plugins.lookup(spec, BUILTIN, "prompts", "prompt set", "give a text file")()
    path = Path(spec)
    if not os.path.lexists(path):
        raise DmdrError(f"prompt file {spec!r} does not exist: give a text file with one prompt per line, "
                        f"or a built-in set such as builtin:demo")
    return _read_lines(path, spec)


def _read_lines(path: Path, label: str) -> list[str]:
    raw = read_bytes(path, f"prompt file {label!r}",
                     fix="give a text file with one prompt per line")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DmdrError(f"prompt file {label!r} is not UTF-8 text (undecodable byte at line {line}): "
                        f"re-save it as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DmdrError(f"prompt file {label!r} has no prompts (it is empty or blank lines only): "
                        f"write one prompt per line")
    return prompts


def prompt_index(sample_id: int, n_prompts: int, seed: int) -> int:
    """Which prompt global sample `sample_id` uses: a fresh seeded permutation every epoch."""
    epoch, pos = divmod(sample_id, n_prompts)
    return int(_epoch_order(n_prompts, seed, epoch)[pos])


@functools.lru_cache(maxsize=4)
def _epoch_order(n_prompts: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_prompts, generator=g)
