"""Every file a command reads or writes, through one set of checks.

Reads (`read_bytes`, `read_text`, `read_json`, `read_jsonl`, `open_image`, `safetensors_header`) turn whatever
the OS or a format library raises (permissions, a folder or a device file where a file was expected, an I/O
error, undecodable text, broken JSON, an image PIL cannot decode, a truncated safetensors file) into one
`DmdrError` line naming the path and the fix.

Outputs are checked before anything loads (`check_output_dir`: a file where a folder is needed, a parent that
cannot be created, no write permission, too little free space), and writes go through `atomic_file` /
`cleanup_on_failure`, which remove their temporary files on every failure and turn a failed write (ENOSPC,
EACCES, EIO) into one line too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import struct
from pathlib import Path
from typing import Iterator

from ..errors import DmdrError

MIN_FREE_BYTES = 16 * 2**20  # an output location with less free space is refused before anything loads
MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header


def reason(err: BaseException) -> str:
    """A short, lower-case description of an OS error (no path: the message names it once)."""
    if isinstance(err, OSError):
        code = err.errno
        named = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EISDIR: "it is a folder", errno.ENOTDIR: "a part of the path is a file, not a folder",
                 errno.ENOENT: "no such file or folder", errno.EIO: "input/output error",
                 errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
                 errno.EDQUOT: "disk quota exceeded", errno.ENAMETOOLONG: "file name too long",
                 errno.ELOOP: "too many symbolic links", errno.EEXIST: "it already exists"}
        if code in named:
            return named[code]
        if err.strerror:
            return err.strerror[0].lower() + err.strerror[1:]
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _label(what: str, path: Path | str) -> str:
    if not what:
        return str(path)
    return what if str(path) in what else f"{what} {path}"


def _check_regular(path: Path, what: str, fix: str) -> None:
    """A path that exists and is a regular file (not a folder, a FIFO that would block, or a device)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DmdrError(f"{_label(what, path)} does not exist: {fix}") from None
        raise DmdrError(f"{_label(what, path)} cannot be read ({reason(err)}): {fix}") from None
    if stat.S_ISDIR(mode):
        raise DmdrError(f"{_label(what, path)} is a folder, not a file: {fix}")
    if not stat.S_ISREG(mode):
        raise DmdrError(f"{_label(what, path)} is not a regular file (a device, pipe or socket): {fix}")


def read_bytes(path: Path | str, what: str = "", fix: str = "check the path") -> bytes:
    path = Path(path)
    _check_regular(path, what, fix)
    try:
        return path.read_bytes()
    except OSError as err:
        raise DmdrError(f"{_label(what, path)} cannot be read ({reason(err)}): {fix}") from None


def open_binary(path: Path | str, what: str = "", fix: str = "check the path"):
    """A regular file opened for reading in binary mode, for readers that stream it (one line if it cannot be)."""
    path = Path(path)
    _check_regular(path, what, fix)
    try:
        return open(path, "rb")
    except OSError as err:
        raise DmdrError(f"{_label(what, path)} cannot be read ({reason(err)}): {fix}") from None


def read_text(path: Path | str, what: str = "", fix: str = "check the path",
              encoding: str = "utf-8") -> str:
    raw = read_bytes(path, what, fix)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DmdrError(f"{_label(what, path)} is not UTF-8 text (undecodable byte at line {line}): re-save it as "
                        f"UTF-8, or {fix}") from None


def read_json(path: Path | str, what: str = "", fix: str = "check the path", kind: type | None = None):
    """A JSON file; `kind` (dict or list) is the type its top level must have."""
    text = read_text(path, what, fix)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DmdrError(f"{_label(what, path)} is not valid JSON ({reason(err)}): {fix}") from None
    if kind is not None and not isinstance(data, kind):
        expected = {dict: "an object ({...})", list: "a list ([...])"}.get(kind, kind.__name__)
        raise DmdrError(f"{_label(what, path)} holds {_json_kind(data)}, not {expected}: {fix}")
    return data


def read_jsonl(path: Path | str, what: str = "", fix: str = "check the path") -> list[dict]:
    """One JSON object per non-blank line."""
    rows = []
    for number, line in enumerate(read_text(path, what, fix).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise DmdrError(f"{_label(what, path)} line {number} is not valid JSON ({reason(err)}): {fix}") from None
        if not isinstance(row, dict):
            raise DmdrError(f"{_label(what, path)} line {number} holds {_json_kind(row)}, not an object: {fix}")
        rows.append(row)
    return rows


def _json_kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def open_image(path: Path | str, what: str = "image", fix: str = "replace or delete it", mode: str | None = "RGB"):
    """A fully decoded PIL image (converted to `mode`; None keeps its own), or one line saying why not."""
    from PIL import Image

    path = Path(path)
    _check_regular(path, what, fix)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except Image.DecompressionBombError as err:
        raise DmdrError(f"{_label(what, path)} is too large to decode ({reason(err)}): {fix}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise DmdrError(f"{_label(what, path)} cannot be read ({reason(err)}): {fix}") from None
        detail = "it is empty" if _size(path) == 0 else reason(err)
        raise DmdrError(f"{_label(what, path)} is not a readable image ({detail}): {fix}") from None


def check_image(path: Path | str, what: str = "image", fix: str = "replace or delete it") -> None:
    """An image PIL identifies and verifies (header, and chunk checksums where the format has them) without
    decoding its pixels: a cheap check of many files before anything loads; one line if it fails."""
    from PIL import Image

    path = Path(path)
    _check_regular(path, what, fix)
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises many kinds (OSError, SyntaxError, ValueError, struct.error)
        if isinstance(err, OSError) and err.errno is not None:
            raise DmdrError(f"{_label(what, path)} cannot be read ({reason(err)}): {fix}") from None
        detail = "it is empty" if _size(path) == 0 else reason(err)
        raise DmdrError(f"{_label(what, path)} is not a readable image ({detail}): {fix}") from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def safetensors_header(path: Path | str, what: str = "weights file",
                       fix: str = "the file is damaged; use another copy") -> dict[str, dict]:
    """{tensor name: {"dtype", "shape"}} from a safetensors file's header, checked against the file's size,
    without reading any tensor data."""
    path = Path(path)
    _check_regular(path, what, fix)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DmdrError(f"{_label(what, path)} is damaged (shorter than a safetensors header): {fix}")
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if n > MAX_HEADER or 8 + n > size:
                raise DmdrError(f"{_label(what, path)} is damaged (its header runs past the end of the file): {fix}")
            raw = f.read(n)
    except OSError as err:
        raise DmdrError(f"{_label(what, path)} cannot be read ({reason(err)}): {fix}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise DmdrError(f"{_label(what, path)} is damaged (its header is not JSON): {fix}") from None
    if not isinstance(header, dict):
        raise DmdrError(f"{_label(what, path)} is damaged (its header is not a mapping): {fix}")
    tensors, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
            tensors[name] = {"dtype": str(info["dtype"]), "shape": [int(d) for d in info["shape"]]}
        except (KeyError, TypeError, ValueError):
            raise DmdrError(f"{_label(what, path)} is damaged (tensor {name!r} has no valid entry): {fix}") from None
        end = max(end, stop)
    if 8 + n + end > size:
        raise DmdrError(f"{_label(what, path)} is damaged (truncated: {size} bytes, the header describes "
                        f"{8 + n + end}): {fix}")
    return tensors


# ---------------------------------------------------------------------------------------------------
# Outputs.

def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def check_output_dir(path: Path | str, what: str = "output folder", fix: str = "choose another folder",
                     min_free: int = MIN_FREE_BYTES) -> Path:
    """A folder that exists or can be created, can be written to and has some free space; nothing is created."""
    path = Path(path).expanduser().absolute()
    refuse_file(path, what, fix)
    base = _nearest_existing(path)
    if not base.is_dir():
        raise DmdrError(f"{_label(what, path)} cannot be created: {base} is a file, not a folder: {fix}")
    _probe_writable(base, path, what, fix)
    _check_free(base, path, what, fix, min_free)
    return path


def refuse_file(path: Path | str, what: str = "output folder", fix: str = "choose another folder") -> None:
    """A folder an output is written into (or renamed to): one line when a file, or a link to one, is there."""
    if os.path.lexists(path) and not Path(path).is_dir():
        raise DmdrError(f"{_label(what, path)} is an existing file, not a folder: {fix}")


def _probe_writable(base: Path, path: Path, what: str, fix: str) -> None:
    """Create and remove a file in `base`: the only test of writability that permissions, read-only mounts,
    ACLs and pseudo file systems all answer truthfully."""
    probe = base / f".dmdr-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        where = "" if base == path else f" (in {base})"
        raise DmdrError(f"{_label(what, path)} is not writable{where}: {reason(err)}: {fix}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _check_free(base: Path, path: Path, what: str, fix: str, min_free: int) -> None:
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return  # no figure to judge by: the writes themselves will tell
    if free < min_free:
        raise DmdrError(f"{_label(what, path)}: only {free / 2**20:.1f} MiB free on its disk (at least "
                        f"{min_free // 2**20} MiB needed): free space or {fix}")


def write_error(err: OSError, path: Path | str, what: str = "output") -> DmdrError:
    return DmdrError(f"could not write {_label(what, path)} ({reason(err)}): free space or fix permissions, then "
                     f"run the command again")


@contextlib.contextmanager
def cleanup_on_failure(*paths: Path, what: str = "output", target: Path | str | None = None, convert: bool = True):
    """Remove `paths` (files or folders made inside) when the block fails in any way; an OSError becomes one
    line naming `target` (default: the first path) unless `convert` is False (callers with their own message)."""
    try:
        yield
    except BaseException as err:
        for p in paths:
            remove(p)
        if convert and isinstance(err, OSError):
            raise write_error(err, target if target is not None else paths[0], what) from None
        raise


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: Path | str, what: str = "output", fsync: bool = False, convert: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` atomically, when it
    fails the temporary file is removed (a failed write surfaces as one line, or as the OSError: `convert`)."""
    path = Path(path)
    tmp = temp_name(path)
    with cleanup_on_failure(tmp, what=what, target=path, convert=convert):
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)


def write_text_atomic(path: Path | str, text: str, what: str = "output", fsync: bool = True,
                      convert: bool = True) -> None:
    with atomic_file(path, what, fsync=False, convert=convert) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
