"""A run folder: created only once the run is sure to start, locked against a second run, and
preemption-aware (SIGTERM / SIGINT finish the current step, checkpoint, and exit with code 143 / 130)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from ..errors import DmdrError

PREEMPT_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.lock = path / ".lock"
        self.check_free()
        if not resume and (path / "checkpoints").is_dir() and any((path / "checkpoints").iterdir()):
            raise DmdrError(f"output folder {path} already holds a run: continue it with --resume latest, or choose "
                            f"another output.dir (-o)")

    def check_free(self) -> None:
        """Refuse a folder another live run holds; a lock left by a dead process is taken over."""
        if self.lock.is_file():
            try:
                pid = int(self.lock.read_text().split()[0])
            except (ValueError, IndexError):
                pid = -1
            if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                raise DmdrError(f"output folder {self.path} is in use by another dmdr run (pid {pid}): wait for it, "
                                f"or choose another output.dir")

    def open(self, recipe_yaml: str, is_main: bool) -> None:
        if not is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.check_free()
        self.lock.write_text(f"{os.getpid()}\n")
        (self.path / "recipe.yaml").write_text(recipe_yaml)

    def close(self) -> None:
        if self.lock.is_file() and self.lock.read_text().split()[:1] == [str(os.getpid())]:
            self.lock.unlink()

    @contextlib.contextmanager
    def preemption(self):
        flag = _Preemption()
        previous = {}
        for sig in PREEMPT_EXIT_CODES:
            try:
                previous[sig] = signal.signal(sig, flag.handler)
            except ValueError:  # not the main thread (e.g. inside some test runners): no handler
                pass
        try:
            yield flag
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if flag.requested:
                self.close()


class _Preemption:
    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self.exit_code = 0

    def handler(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self.exit_code = PREEMPT_EXIT_CODES[signal.Signals(signum)]
