"""A run folder: created only once the run is sure to start, locked against a second run, and
preemption-aware (SIGTERM / SIGINT finish the current step, checkpoint, and exit with code 143 / 130).

The lock is an exclusive `flock` on `<run>/.lock`, which also records the holder's pid for the message. The
kernel drops a flock when its process dies however it dies, so a crashed or SIGKILLed run never leaves a
stale lock and a recycled pid can never block a folder. Where the filesystem has no locks, the pid alone
decides: a lock whose pid is dead is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from ..errors import DmdrError
from .files import check_output_dir, read_json, remove, write_error, write_text_atomic

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


DONE_FILE = "done.json"


class RunFolder:
    def __init__(self, path: Path, resume: bool, what: str = "output.dir (-o)"):
        self.path = path
        self.lock = path / ".lock"
        self.resume = resume
        self._created: list[Path] = []  # folders `open` made (innermost last), removed again if the run fails early
        self._wrote_recipe = False
        check_output_dir(path, what, fix=f"choose another {what}")
        self.check_free()
        self._check_no_run()

    def _check_no_run(self) -> None:
        if not self.resume and _has_checkpoint(self.path):
            raise DmdrError(f"output folder {self.path} already holds a run: continue it with --resume latest, or "
                            f"choose another output.dir (-o)")

    def check_free(self) -> None:
        """Refuse a folder another live run holds, before any weight loads (`open` takes the lock for real).
        The probe takes a shared lock: the processes of one multi-process run probe at once without a clash."""
        if self.lock.is_file() and self._key not in _held:
            os.close(self._lock(shared=True))

    def open(self, recipe_yaml: str, is_main: bool) -> None:
        """Create the folder, take its lock, and only then, atomically under the lock, check again that no other
        run has claimed it since the checks before the models loaded (two runs started at once into one new
        folder: exactly one proceeds). A failure here leaves nothing of this run behind."""
        if not is_main:
            return
        fresh_lock = not self.lock.exists()
        try:
            self._created = [p for p in reversed([self.path, *self.path.parents]) if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
            fd = _held[self._key] if self._key in _held else self._lock(shared=False)
            _held[self._key] = fd
            self._check_no_run()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            recipe = self.path / "recipe.yaml"
            self._wrote_recipe = True
            write_text_atomic(recipe, recipe_yaml, what="the run's recipe copy")
        except BaseException:
            self.discard(remove_lock=fresh_lock)
            raise

    @contextlib.contextmanager
    def failure_guard(self, fresh: bool, is_main: bool):
        """Around everything after `open`: a failed write (disk full, EIO) becomes one line, and a `fresh` run (no
        --resume) that fails before its first checkpoint is discarded. A preempted run (SystemExit) is kept."""
        try:
            yield
        except Exception as err:
            if fresh and is_main and not _has_checkpoint(self.path):
                self.discard()
            if isinstance(err, OSError):
                raise write_error(err, self.path, "the run folder") from None
            raise

    def discard(self, remove_lock: bool = True) -> None:
        """Undo `open` for a run that failed before its first checkpoint: the recipe copy, the lock file (when this
        run made it) and the folders it made go; a folder holding anything else (a cache too) stays."""
        if self._key not in _held and self._created and remove_lock and self.lock.exists():
            # released on the way out (preemption's handler): take it again, so that no run can hold the file
            # this one unlinks; one that took it meanwhile keeps it (and the folder)
            with contextlib.suppress(OSError):
                fd = os.open(self.lock, os.O_RDWR)
                if fcntl is None or _try_exclusive(fd):
                    _held[self._key] = fd
                else:
                    os.close(fd)
        locked = self._key in _held
        if self._wrote_recipe and not _has_checkpoint(self.path):
            with contextlib.suppress(OSError):
                (self.path / "recipe.yaml").unlink()
            if self._created:  # a folder this run made holds nothing but what it wrote; caches stay (the ODE
                # pairs cost a teacher sampling run, and the next start in this folder reuses them)
                for name in ("log.jsonl", DONE_FILE, "samples", "checkpoints",
                             "tensorboard", "wandb", "wandb-run-id"):  # and the dashboards' files (reporting.py)
                    remove(self.path / name)
        if locked and remove_lock and self._created:
            with contextlib.suppress(OSError):  # unlinked while still held: no other run can have it open
                self.lock.unlink()
        self.close()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created = []

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
            holder = _holder(fd)  # read again: the holder may have written its pid while we waited
            os.close(fd)
            who = f"pid {holder}" if holder > 0 else "just starting"
            raise DmdrError(f"output folder {self.path} is in use by another dmdr run ({who}): wait for it, "
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


def _try_exclusive(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


PROBE_GRACE_S = 2.0  # how long `open` retries a taken lock: other runs' probes hold theirs for microseconds


def _take(fd: int, shared: bool, holder: int) -> bool:
    """Lock `fd`; False when a live process holds the lock. The exclusive lock is retried for a moment: a run
    starting at the same time may be probing (a shared lock, released at once), which must not refuse it."""
    if fcntl is not None:
        deadline = time.monotonic() + (0 if shared else PROBE_GRACE_S)
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
            except OSError:  # a filesystem without flock (some network mounts): the recorded pid decides
                break
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


def mark_done(run_dir: Path, step: int, stage: str, outputs: list[str]) -> None:
    """Record that the run wrote everything it promises after generator step `step` (its final checkpoint,
    sample grid and end-of-run reports): written last, so a run killed before has no done.json."""
    write_text_atomic(Path(run_dir) / DONE_FILE, json.dumps({"step": step, "stage": stage, "outputs": outputs},
                                                          indent=1, sort_keys=True) + "\n", what="done.json")


def is_done(run_dir: Path, step: int) -> bool:
    """Whether the run finished everything after generator step `step` (an unreadable done.json: not done)."""
    path = Path(run_dir) / DONE_FILE
    if not path.is_file():
        return False
    try:
        data = read_json(path, kind=dict)
    except DmdrError:
        return False
    return data.get("step") == step
