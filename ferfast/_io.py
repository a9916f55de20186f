"""Atomic file writes: a reader (or a killed run) sees the old file or the whole new one, never a part.

Every file ferfast writes goes through here: checkpoints, split files, box sidecars, unreadable
lists, configs, metadata, confusion-matrix PNGs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["write_atomic", "write_text_atomic"]


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(fh)`` on a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it onto ``path``.

    The folder is created; on any error (or interrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomic` of UTF-8 text."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda fh: fh.write(data))
