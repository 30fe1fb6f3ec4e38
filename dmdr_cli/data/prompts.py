"""Reading prompt sets (see sources.py for where they can live) and ordering them deterministically.

The order of prompts is a pure function of (seed, epoch), and the prompt of global sample i is fixed,
so resuming a run replays exactly the prompts the uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import hashlib
import os
from array import array
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .. import builtin_plugins
from ..errors import DmdrError
from ..runtime.files import read_text
from .sources import open_rows

BUILTIN: dict[str, Callable[[], list[str]]] = {}


def register_builtin(name: str, loader: Callable[[], list[str]]) -> None:
    BUILTIN[name] = loader


def _demo() -> list[str]:
    return _read_lines(Path(__file__).with_name("demo.txt"), "builtin:demo")


register_builtin("demo", _demo)


class PromptSet(Sequence[str]):
    """The non-empty prompts of a source, in order, stored compactly: one UTF-8 buffer and an end offset per
    prompt (a million 60-character prompts take about 70 MB, not a list of Python strings).

    `rows`, `empty` and `duplicates` say what the source held; `deduplicated` whether repeats were dropped
    (first occurrence kept). Repeats are found by 64-bit BLAKE2b digests, sorted once at the end: a collision
    between two different prompts (odds about n^2 / 2^65, 3e-8 for a million) would count one as a repeat.
    """

    def __init__(self, label: str):
        self.label = label
        self._buffer = bytearray()
        self._ends = array("q")
        self._digests = array("Q")
        self.rows = self.empty = self.duplicates = 0
        self.deduplicated = False

    def _add(self, prompt: str | None) -> None:
        self.rows += 1
        text = prompt.strip() if prompt else ""
        if not text:
            self.empty += 1
            return
        data = text.encode("utf-8")
        self._buffer += data
        self._ends.append(len(self._buffer))
        self._digests.append(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"))

    def _finish(self, deduplicate: bool) -> "PromptSet":
        import numpy as np

        digests = np.frombuffer(self._digests, dtype=np.uint64) if len(self._digests) else np.zeros(0, np.uint64)
        first = np.unique(digests, return_index=True)[1]
        del digests
        self._digests = array("Q")
        self.duplicates = len(self._ends) - len(first)
        if deduplicate and self.duplicates:
            first.sort()
            self._keep(first)
        self.deduplicated = deduplicate
        return self

    def _keep(self, rows) -> None:
        """Drop every prompt but `rows` (ascending), moving the kept bytes down within the one buffer."""
        ends, write, kept = self._ends, 0, array("q")
        for i in map(int, rows):
            start, stop = (ends[i - 1] if i else 0), ends[i]
            self._buffer[write:write + stop - start] = self._buffer[start:stop]
            write += stop - start
            kept.append(write)
        del self._buffer[write:]
        self._ends = kept

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = self._ends[i - 1] if i else 0
        return self._buffer[start:self._ends[i]].decode("utf-8")

    def __eq__(self, other) -> bool:
        return isinstance(other, (PromptSet, list, tuple)) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def summary(self) -> str:
        """One line for the plan and the run's start: what the source held and what was kept."""
        parts = [f"{self.rows:,} rows"]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} repeats dropped" if self.deduplicated else
                         f"{self.duplicates:,} repeats kept (data.deduplicate=true drops them)")
        if self.empty:
            parts.append(f"{self.empty:,} empty dropped")
        return f"{len(self):,} prompts from {self.label}: {', '.join(parts)}"


def read_prompts(spec: str, column: str | None = None, deduplicate: bool = False) -> PromptSet:
    """The prompts of `builtin:NAME`, `hf:REPO[:SPLIT]`, a CSV / TSV / JSONL / Parquet file (the prompt `column`)
    or a UTF-8 text file with one prompt per line; empty rows are skipped, repeats kept unless `deduplicate`."""
    if spec.startswith("builtin:"):
        loader = builtin_plugins.lookup(spec, BUILTIN, "prompts", "prompt set", "give a prompt file")
        label, rows = f"built-in set {spec}", iter(loader())
    else:
        if not spec.startswith("hf:") and not os.path.lexists(Path(spec).expanduser()):
            raise DmdrError(f"prompt file {spec!r} does not exist: give a text file with one prompt per line, a "
                            f"CSV / TSV / JSONL / Parquet file, hf:REPO[:SPLIT], or a built-in set such as "
                            f"builtin:demo")
        source = open_rows(spec, column)
        label, rows = source.label, source.rows
    prompts = PromptSet(label)
    for row in rows:
        prompts._add(row)
    prompts._finish(deduplicate)
    if not len(prompts):
        raise DmdrError(f"{label} has no prompts (it is empty or blank rows only): write one prompt per line "
                        f"(or row)")
    return prompts


def recipe_prompts(data, validation: bool = False) -> PromptSet:
    """A recipe's training prompts (data.prompts) or its validation prompts (data.validation_prompts)."""
    spec = data.validation_prompts if validation else data.prompts
    return read_prompts(spec, data.prompt_column, data.deduplicate)


def _read_lines(path: Path, label: str) -> list[str]:
    """A text file shipped with dmdr (a built-in set), one prompt per line."""
    text = read_text(path, f"prompt file {label!r}", fix="reinstall dmdr")
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompt_index(sample_id: int, n_prompts: int, seed: int) -> int:
    """Which prompt global sample `sample_id` uses: a fresh seeded permutation every epoch."""
    epoch, pos = divmod(sample_id, n_prompts)
    return int(_epoch_order(n_prompts, seed, epoch)[pos])


@functools.lru_cache(maxsize=4)
def _epoch_order(n_prompts: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_prompts, generator=g)
