"""What a run shows and records: a rich progress bar (main process), a JSONL log, TensorBoard / W&B."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .files import read_text, write_text_atomic
from .reporting import finite_numbers, open_reporters


class MetricsLog:
    """Append-only JSONL (one object per logged step), mirrored to the run's reporters (runtime/reporting.py:
    TensorBoard where installed by default, W&B with train.report_to)."""

    def __init__(self, path: Path, enabled: bool = True, reporters: list | None = None):
        self.path = path
        self.enabled = enabled
        self.reporters: list = []
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.reporters = open_reporters(["tensorboard"], path.parent) if reporters is None else reporters

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        numbers = finite_numbers(row)
        for reporter in self.reporters if numbers else ():
            reporter.scalars(step, numbers)

    def image(self, step: int, key: str, path: Path) -> None:
        """A grid the run just wrote (samples/, validation) to the reporters that show images."""
        for reporter in self.reporters if self.enabled else ():
            reporter.image(step, key, path)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log reads as one run."""
        if not (self.enabled and self.path.exists()):
            return
        text = read_text(self.path, "the run log", fix="move it aside and --resume again")
        kept = [line for line in text.splitlines() if _logged_step(line) <= step]
        # atomic: a kill here keeps the old log, never half of it; a failed write leaves no temporary file
        write_text_atomic(self.path, "".join(line + "\n" for line in kept), what="the run log", fsync=False)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []


def _logged_step(line: str) -> float:
    """The step of a log line; a line a kill cut short (or a blank one) sorts after every step, so it is dropped."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return v


class StepProgress:
    """Progress bar with the latest losses, it/s and ETA; silent on non-main processes."""

    def __init__(self, total: int, start: int, console: Console, enabled: bool, title: str):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn(f"[bold]{title}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"), console=console, disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task(title, total=total, completed=start, rate="", losses="")
        self.t0, self.start = time.perf_counter(), start

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, step: int, losses: dict) -> None:
        if not self.enabled:
            return
        done = step - self.start
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        text = " ".join(f"{k}={v:.4g}" for k, v in losses.items() if isinstance(v, (int, float)))
        self.progress.update(self.task, completed=step, rate=f"{rate:.2f} it/s", losses=text)
