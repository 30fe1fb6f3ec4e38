"""A run folder: created only once the run is sure to start, locked against a second run, and
preemption-aware (SIGTERM / SIGINT finish the current step, checkpoint, and exit with code 143 / 130).

The lock is an exclusive `flock` on `<run>/.lock`, which also records the holder's pid for the message. The
kernel drops a flock when its process dies however it dies, so a crashed or SIGKILLed run never leaves a
stale lock and a recycled pid can never block a folder. Where the filesystem has no locks, the pid alone
decides: a lock whose pid is dead is taken over.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from ..errors import DmdrError

try:
    import fcntl
except ImportError:  # Windows: pid liveness only
    fcntl = None

PREEMPT_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}

# Locks this process holds, by folder: a later run in the same process (tests, notebooks) may reuse one that
# an earlier run failed to release, as a second flock from the same process would block against its own.
_held: dict[Path, int] = {}


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
        if not resume and _has_checkpoint(path):
            raise DmdrError(f"output folder {path} already holds a run: continue it with --resume latest, or choose "
                            f"another output.dir (-o)")

    def check_free(self) -> None:
        """Refuse a folder another live run holds, before any weight loads (`open` takes the lock for real).
        The probe takes a shared lock: the processes of one multi-process run probe at once without a clash."""
        if self.lock.is_file() and self._key not in _held:
            os.close(self._lock(shared=True))

    def open(self, recipe_yaml: str, is_main: bool) -> None:
        if not is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = _held[self._key] if self._key in _held else self._lock(shared=False)
        _held[self._key] = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        (self.path / "recipe.yaml").write_text(recipe_yaml)

    def close(self) -> None:
        """Release the lock. The (emptied) file stays: unlinking a flocked file lets two runs lock two files."""
        fd = _held.pop(self._key, None)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the only fd of the open file drops its flock

    @property
    def _key(self) -> Path:
        return self.path.resolve()

    def _lock(self, shared: bool) -> int:
        """An fd holding the folder's lock, or DmdrError naming the live run that holds it."""
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        holder = _holder(fd)
        if not _take(fd, shared, holder):
            os.close(fd)
            raise DmdrError(f"output folder {self.path} is in use by another dmdr run (pid {holder}): wait for it, "
                            f"or choose another output.dir")
        return fd

    @contextlib.contextmanager
    def preemption(self):
        """Signals set a flag the training loop checks after each step. A loop that ends by an exception (the
        preemption's SystemExit, a stopped run) releases the folder's lock on the way out; a finished run
        releases it with `close`."""
        flag = _Preemption()
        previous = {}
        for sig in PREEMPT_EXIT_CODES:
            try:
                previous[sig] = signal.signal(sig, flag.handler)
            except ValueError:  # not the main thread (e.g. inside some test runners): no handler
                pass
        try:
            yield flag
        except BaseException:
            self.close()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _take(fd: int, shared: bool, holder: int) -> bool:
    """Lock `fd`; False when a live process holds the lock."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # a filesystem without flock (some network mounts): the recorded pid decides
            pass
    return holder in (-1, os.getpid()) or not _pid_alive(holder)


def _holder(fd: int) -> int:
    """The pid recorded in the lock file (-1: none)."""
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (ValueError, IndexError, OSError):
        return -1


def _has_checkpoint(path: Path) -> bool:
    """A complete checkpoint: what a killed run left half-written (`.partial-*`) does not count as a run."""
    return any((p / "state.json").is_file() for p in (path / "checkpoints").glob("step-*"))


class _Preemption:
    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self.exit_code = 0

    def handler(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self.exit_code = PREEMPT_EXIT_CODES[signal.Signals(signum)]
