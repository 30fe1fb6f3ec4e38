"""An export folder that appears whole or not at all.

Everything is written into a hidden staging folder beside `--out` (same filesystem, so the final
`os.rename` is atomic) and only renamed to `--out` once every file is complete. On any error the
staging folder, and any parent folders created for it, are removed: a failed export leaves nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import DmdrError
from ..runtime.files import check_output_dir


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


class StagedOutput:
    """`--out` checked up front, written via a staging folder, committed by rename."""

    def __init__(self, out: Path, *, overwrite: bool, protected: list[Path]):
        self.out = Path(out).expanduser().absolute()
        self.overwrite = overwrite
        self.protected = [Path(p).expanduser().resolve() for p in protected]
        self.staging: Path | None = None
        self._created_parents: list[Path] = []

    def check(self) -> None:
        """Refuse before any weight loads: an occupied --out, or one that overlaps the export's own inputs."""
        resolved = self.out.resolve()
        for path in self.protected:
            if _overlaps(resolved, path):
                raise DmdrError(f"--out {self.out} overlaps {path}, which this export reads: choose a folder outside "
                                f"the checkpoint and the teacher model")
        if self.out.is_file() or self.out.is_symlink():
            if not self.overwrite:
                raise DmdrError(f"--out {self.out} is an existing file: choose a new folder, or pass --overwrite to "
                                f"replace it")
        elif self.out.is_dir() and any(self.out.iterdir()) and not self.overwrite:
            raise DmdrError(f"--out {self.out} exists and is not empty: choose a new folder, or pass --overwrite to "
                            f"replace its contents")
        # the staging folder is made beside --out: its parent must be creatable and writable, with some space
        check_output_dir(self.out.parent, f"--out {self.out}: its folder", fix="choose another --out")

    def __enter__(self) -> Path:
        self.check()
        missing = [p for p in [self.out.parent, *self.out.parent.parents] if not p.exists()]
        self.staging = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        try:
            for parent in reversed(missing):
                parent.mkdir()
                self._created_parents.insert(0, parent)
            if self.staging.exists():
                shutil.rmtree(self.staging)
            self.staging.mkdir()
        except OSError as err:
            self._discard()
            raise DmdrError(f"could not create the export folder {self.out} ({err.strerror or err}): check "
                            f"permissions and free space") from None
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._commit()
                return False
            except OSError as err:
                self._discard()
                raise DmdrError(f"could not move the export into {self.out} ({err.strerror or err}): "
                                f"check permissions and free space") from None
        self._discard()
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix, and nothing was left behind
            raise DmdrError(f"could not write the export to {self.out} ({exc.strerror or exc}): free space or fix "
                            f"permissions, then export again") from None
        return False

    def _discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        for parent in self._created_parents:  # innermost first
            try:
                parent.rmdir()
            except OSError:
                break

    def _commit(self) -> None:
        """Move the finished staging folder to --out; an old --out (--overwrite) is removed only afterwards."""
        previous = None
        if self.out.is_symlink() or self.out.is_file():
            self.out.unlink()
        elif self.out.is_dir():
            previous = self.out.parent / f".{self.out.name}.replaced-{os.getpid()}"
            os.rename(self.out, previous)
        os.rename(self.staging, self.out)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)


def inside(folder: Path, *names: str) -> Path:
    """`folder / names`, refused if a name read from a model or checkpoint file would lead outside `folder`."""
    for name in names:
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise DmdrError(f"refusing to write {name!r}: the name would lead outside the export folder")
    return folder.joinpath(*names)
