"""Splitting sampling and scoring over the processes of `accelerate launch`, and merging through files.

Each process takes every world_size-th item (a balanced share whatever the order), writes what it made to
its own file, and after a barrier the main process reads every file and merges. A single process does
the same with no files and no barrier. Samples need no merging at all: every image already has its own
file, and its content depends on its keys only (generators.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, TypeVar

from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from rich.text import Text

from ..runtime.distributed import Dist

T = TypeVar("T")


def share(items: Sequence[T], dist: Dist) -> list[T]:
    return list(items[dist.rank::dist.world_size])


def gather_records(records: list[dict], dist: Dist, scratch: Path, name: str) -> list[dict] | None:
    """Every process's records on the main process (None elsewhere), in rank order."""
    if dist.world_size == 1:
        return records
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / f"{name}.rank{dist.rank}.json").write_text(json.dumps(records))
    dist.barrier()
    if not dist.is_main:
        return None
    merged = []
    for rank in range(dist.world_size):
        part = scratch / f"{name}.rank{rank}.json"
        merged += json.loads(part.read_text())
        part.unlink()
    return merged


class ImagesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} images/s" if speed else "- images/s")


def image_progress(total: int, title: str, console, enabled: bool) -> tuple[Progress, int]:
    """A rich progress bar counting images, with images/s and ETA (silent off the main process);
    returns (progress, task id): `progress.advance(task, n)` as images finish."""
    progress = Progress(TextColumn(f"[bold]{title}[/]"), BarColumn(), MofNCompleteColumn(), ImagesPerSecond(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                        disable=not enabled)
    return progress, progress.add_task(title, total=total)
