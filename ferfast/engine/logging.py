"""Run logs: a JSON-lines file (one object per line, flushed each write) mirrored to TensorBoard, progress bars,
one-line epoch summaries, and the guard against non-finite losses. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ferfast._io import write_atomic
from ferfast.engine.dist import get_rank

__all__ = [
    "LOG_FILE",
    "MetricLogger",
    "NonFiniteLossError",
    "epoch_summary",
    "nonfinite_found",
    "nonfinite_where",
    "progress",
    "tensorboard_available",
]

LOG_FILE = "log.jsonl"
ROLLBACK_POLICIES = ("stop", "rollback")


def tensorboard_available() -> bool:
    """True when ``torch.utils.tensorboard`` can be used (the ``tensorboard`` package is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def _jsonable(value: Any) -> Any:
    """Plain JSON: tensors and numpy values become numbers/lists, non-finite floats the strings 'nan'/'inf'/'-inf'."""
    if torch.is_tensor(value):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 and value.dim() == 0 else value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"cannot log a value of type {type(value).__name__}: {value!r}")


def _scalars(prefix: str, value: Any) -> Iterable[tuple[str, float]]:
    """The finite-or-not real scalars inside ``value`` (nested dicts give ``a/b`` tags); lists are skipped."""
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _scalars(f"{prefix}/{k}" if prefix else str(k), v)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        yield prefix, float(value)


def _drop_cut_line(path: Path) -> None:
    """Remove a last line without its newline (a write cut short by a kill) from an existing log, atomically, so
    that the next record starts on a line of its own."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
    except FileNotFoundError:
        return
    write_atomic(path, lambda out: out.write(data[: data.rfind(b"\n") + 1]))


class MetricLogger:
    """Append one JSON object per :meth:`log` call to ``output_dir/log.jsonl`` and mirror scalars to TensorBoard.

    ``tensorboard=None`` mirrors when TensorBoard is importable; ``writer`` may be any object with
    ``add_scalar(tag, value, step)`` and ``flush()``. On ranks other than 0 nothing is written. An existing log's
    last line cut short by a kill (no newline) is removed when the logger opens it.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        filename: str = LOG_FILE,
        tensorboard: bool | None = None,
        writer: Any = None,
        rank: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / filename
        self.enabled = (get_rank() if rank is None else rank) == 0
        self._fh: IO[str] | None = None
        self.writer = None
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _drop_cut_line(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # kept open; close() closes it
        if writer is not None:
            self.writer = writer
        elif tensorboard or (tensorboard is None and tensorboard_available()):
            if not tensorboard_available():
                raise ImportError("tensorboard=True needs the 'tensorboard' package (pip install tensorboard)")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

    def log(self, record: Mapping[str, Any], step: int | None = None, *, prefix: str = "") -> None:
        """Write ``record`` (plus ``step`` when given) as one JSON line; its scalars go to TensorBoard as
        ``prefix/key`` at ``step``."""
        if not isinstance(record, Mapping):
            raise TypeError(f"record must be a mapping of names to values, got {type(record).__name__}")
        if not self.enabled or self._fh is None:
            return
        line = _jsonable(dict(record) if step is None else {"step": step, **record})
        self._fh.write(json.dumps(line, allow_nan=False) + "\n")
        self._fh.flush()
        if self.writer is not None:
            for tag, value in _scalars(prefix, {k: v for k, v in record.items() if k != "step"}):
                self.writer.add_scalar(tag, value, step)

    def drop_records(self, drop: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite the JSON-lines file (atomically) without the records for which ``drop(record)`` is true, and
        without a last line cut short by a kill; returns how many records went. A resumed run calls it (through
        :func:`~ferfast.engine.loop.fit`) for the records that its killed predecessor wrote after its last
        checkpoint, so that the log holds each step once. Lines that are not JSON objects are kept; TensorBoard's
        events are not rewritten (TensorBoard shows the replayed steps over the old ones). No-op off rank 0."""
        if not self.enabled or self._fh is None or not self.path.is_file():
            return 0
        self._fh.flush()
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        kept, dropped = [], 0
        for i, line in enumerate(lines):
            if not line.endswith("\n") and i == len(lines) - 1:  # a write cut short by a kill
                dropped += 1
                continue
            try:
                record = json.loads(line)
            except ValueError:
                kept.append(line)
                continue
            if isinstance(record, dict) and drop(record):
                dropped += 1
            else:
                kept.append(line)
        if not dropped:
            return 0
        self._fh.close()
        self._fh = None
        try:
            write_atomic(self.path, lambda fh: fh.write("".join(kept).encode("utf-8")))
        finally:
            self._fh = open(self.path, "a", encoding="utf-8")
        return dropped

    def flush(self) -> None:
        """Flush the JSON-lines file and the TensorBoard writer."""
        if self._fh is not None:
            self._fh.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Close the file and the TensorBoard writer (later :meth:`log` calls are ignored)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.writer is not None:
            if hasattr(self.writer, "close"):
                self.writer.close()
            self.writer = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    v = float(value)
    if v != 0 and math.isfinite(v) and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4f}"


def epoch_summary(
    epoch: int, metrics: Mapping[str, Any], *, total_epochs: int | None = None, elapsed_s: float | None = None
) -> str:
    """One line for the console, e.g. ``epoch 3/100 | loss 0.6931 | lr 1.500e-04 | 12.3s``."""
    head = f"epoch {epoch}" if total_epochs is None else f"epoch {epoch}/{total_epochs}"
    parts = [head, *(f"{k} {_fmt(v)}" for k, v in metrics.items())]
    if elapsed_s is not None:
        parts.append(f"{elapsed_s:.1f}s")
    return " | ".join(parts)


def progress(
    iterable: Iterable[Any],
    desc: str | None = None,
    total: int | None = None,
    enabled: bool | None = None,
    *,
    file: IO[str] | None = None,
    **tqdm_kwargs: Any,
) -> tqdm:
    """A tqdm progress bar over ``iterable``; shown on rank 0 when ``file`` (stderr) is a terminal, or when forced
    with ``enabled=True``; never on other ranks. Iterating it yields the items either way."""
    file = sys.stderr if file is None else file
    if get_rank() != 0:
        show = False
    elif enabled is None:
        show = bool(getattr(file, "isatty", lambda: False)())
    else:
        show = bool(enabled)
    return tqdm(iterable, desc=desc, total=total, disable=not show, file=file, dynamic_ncols=True, **tqdm_kwargs)


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite, and the run was told to stop (``policy="stop"``)."""


def nonfinite_where(stage: str, epoch: int, count: int, first_bad: int, step: int) -> str:
    """``"<stage>: <count> non-finite loss(es) in epoch <epoch> up to step <step> (first at step <first_bad>)"``
    (``epoch``: 1-based, as on the screen; steps: global step indices; ``first_bad`` -1: another rank's)."""
    first = f"first at step {first_bad}" if first_bad >= 0 else "on another rank"
    return f"{stage}: {count} non-finite loss(es) in epoch {epoch} up to step {step} ({first})"


def nonfinite_found(policy: str, stage: str, epoch: int, count: int, first_bad: int, step: int) -> bool:
    """React to ``count`` non-finite losses that a read of the device statistics at global ``step`` found in
    ``epoch`` (1-based, as the screen shows it; ``first_bad``: the first such step, -1 when only another rank had
    one): ``policy="stop"`` raises :class:`NonFiniteLossError`; ``policy="rollback"`` warns and returns True (the
    caller reloads its last checkpoint; :func:`~ferfast.engine.loop.fit` words its own warning, saying what the
    rollback changes). The loop reads these only every ``log_every`` steps, so that no step waits for the device."""
    if policy not in ROLLBACK_POLICIES:
        raise ValueError(f"policy must be one of {ROLLBACK_POLICIES}, got {policy!r}")
    where = nonfinite_where(stage, epoch, count, first_bad, step)
    if policy == "stop":
        raise NonFiniteLossError(
            f"{where}; lower the learning rate, enable gradient clipping, or run with the rollback policy to "
            "reload the last checkpoint (with a lower learning rate, skipping the batch)"
        )
    warnings.warn(f"{where}: rolling back to the last checkpoint", stacklevel=3)
    return True
