"""One run per output folder: an exclusive lock on a stage's folder for the length of the run.

Two runs started on one folder would both write into it (interleaved ``log.jsonl``, checkpoints overwritten by
each other). :func:`run_lock` takes an exclusive, non-blocking ``flock`` on ``<folder>/ferfast.lock``, so a second
run fails at once with :class:`RunLockedError` naming the folder and the holder (pid, host, start time, which the
holder writes into the file). The kernel releases a ``flock`` when its process dies, so a run killed with
``kill -9`` never leaves a stale lock: a leftover ``ferfast.lock`` whose lock is not held does not block anyone.
(Forked data-loader workers share the lock's descriptor; after a ``kill -9`` of the run the lock lasts until they
notice and exit, within seconds.)

The lock file is removed when the lock is released (while still held, so no other process can be holding it),
and a folder that did not exist before the lock and is empty after it is removed too: a run that fails its
validation leaves nothing behind. A run that locks the file just as its holder removes it notices (the file it
locked is no longer the one at the path) and tries again.

Within one process the lock is re-entrant: :func:`ferfast.finetune` holds a stage's folder across the stage's
training and its evaluation, and the driver inside takes the same lock again. Under ``torch.distributed`` only
rank 0 locks (the ranks share the folder) and tells the others whether it got the lock, so every rank fails
together. Without ``fcntl`` (Windows) the folder is not locked (a warning says so).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLockedError", "lock_holder", "move_aside", "run_lock"]

#: the lock file in a locked folder
LOCK_FILE = "ferfast.lock"

#: folders this process holds: resolved path -> [file descriptor (-1 on ranks other than 0, unlocked), depth]
_HELD: dict[Path, list[int]] = {}


class RunLockedError(RuntimeError):
    """Another run holds the folder's lock; ``folder`` and ``holder`` (its pid/host/started, if known) name it."""

    def __init__(self, folder: Path, holder: dict | None) -> None:
        self.folder = folder
        self.holder = holder
        if holder:
            who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('started', '?')}"
        else:
            who = "another process (it has not yet written its pid)"
        super().__init__(
            f"output folder {folder} is in use: locked by {who}. Wait for that run to finish (or stop it), "
            f"or choose another run.output_dir"
        )


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """What the holder of ``folder``'s lock wrote (``pid``, ``host``, ``started``), or None if unreadable."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _acquire(folder: Path) -> int:
    """Lock ``folder/ferfast.lock`` (created) and write this process's identity into it; returns the descriptor."""
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(folder, lock_holder(folder)) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder may have removed the file between our open and our lock: lock the one at the path
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    return fd


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first (what ``mkdir(parents=True)`` creates)."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders we created (deepest first) while they are empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:  # not empty (the run wrote into it), or gone
            return


def _release(folder: Path, fd: int, created: list[Path]) -> None:
    """Remove the lock file (still locked, so nobody else holds it), unlock, and remove the folders we made if
    they are empty."""
    try:
        (folder / LOCK_FILE).unlink(missing_ok=True)
    finally:
        try:  # explicitly: forked loader workers share the descriptor, and their copies would keep the lock
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    _remove_empty(created)


@contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block; yields the folder.

    Raises :class:`RunLockedError` at once when another process holds it. Re-entrant within a process. Under
    ``torch.distributed`` every rank calls it; rank 0 locks and the others learn whether it succeeded.
    """
    from ferfast.engine.dist import broadcast_object, is_distributed, is_main_process

    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
    fd, created, error = None, [], None
    if is_main_process():
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(f"no fcntl on this platform: {folder} is not locked against a second run", stacklevel=3)
        else:
            try:
                created = _missing_folders(folder)
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    fd = _acquire(folder)
                except RunLockedError:
                    raise
                except OSError as e:  # a file in the way, a read-only or full disk: say which folder
                    raise OSError(
                        e.errno, f"cannot create or lock the output folder {folder}: {e.strerror or e}"
                    ) from None
            except (RunLockedError, OSError) as e:
                _remove_empty(created)
                error = e
    if is_distributed():  # every rank fails together when rank 0 could not lock
        message = broadcast_object(None if error is None else str(error))
        if message is not None and error is None:
            raise RuntimeError(f"rank 0 could not lock the output folder: {message}")
    if error is not None:
        raise error
    _HELD[key] = [-1 if fd is None else fd, 1]  # on every rank, so that all take the re-entrant path alike
    try:
        yield folder
    finally:
        del _HELD[key]
        if fd is not None:
            _release(folder, fd, created)


def move_aside(paths: list[str | os.PathLike], into: str | os.PathLike) -> Path | None:
    """Start over without losing anything: move the existing ``paths`` (a run's stage folders, its split file)
    into a new folder ``<into>/previous-<YYYYmmdd-HHMMSS>/`` under their own names; returns that folder, or None
    when none of them exists. Nothing is deleted.

    A folder another run holds is refused (:class:`RunLockedError`) before anything moves: each folder is locked
    while it is checked, and moved only after all were checked. Rank 0 only (the caller waits for it).
    """
    existing = [Path(p) for p in paths if Path(p).exists()]
    if not existing:
        return None
    for path in existing:
        if path.is_dir():
            with run_lock(path):  # refuses a folder in use, naming its holder
                pass
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = Path(into) / f"previous-{stamp}"
    n = 1
    while target.exists():
        target = Path(into) / f"previous-{stamp}-{n}"
        n += 1
    target.mkdir(parents=True)
    for path in existing:
        path.rename(target / path.name)
    return target
