"""Atomic file writes: a reader (or a killed run) sees the old file or the whole new one, never a part.

Every file ferfast writes goes through here: checkpoints, split files, box sidecars, unreadable
lists, configs, metadata, confusion-matrix PNGs.

The temporary file is ``.<name>.<8 random characters>.tmp`` beside the target (``tempfile.mkstemp``'s names);
a process killed during a write leaves it behind, and :func:`remove_temp_files` removes such leftovers by that
pattern. A write that fails because the disk is full raises :class:`DiskFullError` ("no space left on device"
and the path), whatever layer reported it, and leaves no temporary file.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["DiskFullError", "remove_temp_files", "temp_file_pattern", "write_atomic", "write_text_atomic"]

#: errno values that mean the disk (or the user's quota) is full
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: the text of torch's zip writer when a write it made came up short (it hides the OSError, if any, behind it)
_SHORT_WRITE_RE = re.compile(r"unexpected pos|file write failed")
#: below this many free bytes, a short write in torch's zip writer is taken for a full disk
_NEARLY_FULL_BYTES = 8 << 20
#: the random part of ``tempfile.mkstemp``'s names (``tempfile._RandomNameSequence``: 8 of these characters)
_MKSTEMP_RANDOM = r"[a-z0-9_]{8}"


class DiskFullError(OSError):
    """A write failed because the disk is full: ``errno`` ENOSPC, ``filename`` the file that was being written.

    An :class:`OSError`, so that code catching OSError still catches it; its message names the path and says
    "no space left on device" in words rather than as torch's zip-writer assertion.
    """

    def __init__(self, path: str | os.PathLike, detail: str = "") -> None:
        self.message = f"no space left on device: cannot write {path}" + (f" ({detail})" if detail else "")
        super().__init__(errno.ENOSPC, self.message, str(path))

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable (multiprocessing): rebuild from the message only
        return (_rebuild_disk_full, (self.filename, self.message))


def _rebuild_disk_full(path: str, message: str) -> DiskFullError:
    err = DiskFullError(path)
    err.message = message
    return err


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (``__cause__``/``__context__``), without cycles."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (raised while writing into ``folder``) means the disk is full.

    Detected: an :class:`OSError` with errno ENOSPC or EDQUOT anywhere in the exception's chain (Python's own
    writes; torch's zip writer raises its ``enforce fail ... unexpected pos`` RuntimeError *during* the OSError
    that a Python file object's ``write`` raised, so that OSError is its ``__context__``); and a torch
    RuntimeError saying "no space left on device", or ``unexpected pos`` / ``file write failed`` (a short write
    whose cause torch swallowed) while the folder's file system has less than 8 MiB free (``shutil.disk_usage``,
    checked before the partial temporary file is removed).
    """
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
    if isinstance(exc, RuntimeError) and "no space left on device" in str(exc).lower():
        return True
    if isinstance(exc, RuntimeError) and _SHORT_WRITE_RE.search(str(exc)):
        free = _free_bytes(folder)
        return free is not None and free < _NEARLY_FULL_BYTES
    return False


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(fh)`` on a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it onto ``path``.

    The folder is created; on any error (or interrupt) the temporary file is removed and ``path`` is untouched.
    A full disk raises :class:`DiskFullError` naming ``path`` (chained to the original error).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if _disk_full(exc, path.parent):
            raise DiskFullError(path, "no room for a new file") from exc
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and _disk_full(exc, path.parent)  # before the partial file is freed
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFullError(path, f"{path.name} is unchanged; free some space and run again") from exc
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomic` of UTF-8 text."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda fh: fh.write(data))


def temp_file_pattern(name_pattern: str) -> re.Pattern[str]:
    """The names of :func:`write_atomic`'s temporary files for targets whose names match ``name_pattern`` (a regex).

    E.g. ``temp_file_pattern(r"checkpoint-last\\.pth")`` matches ``.checkpoint-last.pth.k3j_x9ab.tmp``.
    """
    return re.compile(rf"^\.(?:{name_pattern})\.{_MKSTEMP_RANDOM}\.tmp$")


def remove_temp_files(folder: str | os.PathLike, pattern: re.Pattern[str]) -> list[Path]:
    """Delete the files in ``folder`` (not below it) whose names match ``pattern``: temporary files that a process
    killed during a write left behind. Returns the paths removed; a missing folder removes nothing.

    Call it only when no other process writes into ``folder`` (at a run's start-up): a live writer's temporary
    file matches the same pattern.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if pattern.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
