"""Checkpoints in MAE's format, written atomically and read back with ``torch.load(weights_only=True)``.

A checkpoint is MAE's dict ``{'model', 'optimizer', 'epoch', 'scaler', 'ema', 'args'}`` plus ``step`` (the
iteration inside the epoch, for mid-epoch resumes), ``class_names`` and ``rng`` (the torch, CUDA, numpy and
Python random states, stored as tensors and plain types so that a ``weights_only`` load reads them). Files are
named like MAE's: ``checkpoint-{N}.pth``, plus ``checkpoint-last.pth`` for ``--resume`` and
``checkpoint-best.pth`` (the best validation score so far).

Epoch numbering: the ``epoch`` field keeps MAE's meaning, the 0-based index of the last *finished* epoch (MAE
resumes at ``epoch + 1``; -1 in a checkpoint written during the first epoch). :func:`~ferfast.engine.loop.fit`
adds ``epochs_done`` (the number of finished epochs, the 1-based number the screen and ``log.jsonl`` show for
the last one; ``epoch + 1``) and ``step`` (the batches of the next epoch already trained, 0 at an epoch's end),
and names its numbered files after ``epochs_done``: ``checkpoint-3.pth`` is the state after 3 epochs (earlier
versions named it ``checkpoint-2.pth``; such files, whose ``epoch`` field is the same, still resume).
A checkpoint without ``epochs_done`` (MAE's, older ferfast's) reads as ``epochs_done = epoch + 1, step = 0``.

A killed run can trust what it finds: every file is written atomically (a kill leaves at most a temporary
``.checkpoint-*.pth.XXXXXXXX.tmp``, which :func:`remove_stale_temp_files` deletes at the next start), a full disk
raises :class:`~ferfast._io.DiskFullError` with the old file intact, and :func:`load_latest_checkpoint` falls back
from a damaged ``checkpoint-last.pth`` to the newest numbered checkpoint that loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from ferfast._io import DiskFullError, remove_temp_files, temp_file_pattern, write_atomic
from ferfast.models.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    strip_wrapper_prefixes,
    torch_load_safe,
    unwrap_model,
)

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "CheckpointError",
    "CorruptCheckpointError",
    "DiskFullError",
    "UnsafeCheckpointError",
    "capture_rng",
    "checkpoint_path",
    "latest_checkpoint",
    "link_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "prune_checkpoints",
    "remove_stale_temp_files",
    "restore_rng",
    "save_checkpoint",
    "save_epoch_checkpoint",
    "strip_wrapper_prefixes",
    "to_plain",
    "unwrap_model",
    "write_atomic",
]

LAST_CHECKPOINT = "checkpoint-last.pth"
BEST_CHECKPOINT = "checkpoint-best.pth"
_EPOCH_RE = re.compile(r"^checkpoint-(\d+)\.pth$")
#: temporary files of interrupted checkpoint writes: write_atomic's ``.<name>.XXXXXXXX.tmp`` for a checkpoint name,
#: and link_checkpoint's ``.<name>.link.tmp``
_TEMP_RE = temp_file_pattern(r"checkpoint-(?:last|best|\d+)\.pth")
_LINK_TEMP_RE = re.compile(r"^\.checkpoint-(?:last|best|\d+)\.pth\.link\.tmp$")
_RESERVED = frozenset(
    {"model", "optimizer", "epoch", "step", "scaler", "ema", "ema_num_updates", "args", "class_names", "rng"}
)


# --------------------------------------------------------------------------------------------- atomic writes


# ------------------------------------------------------------------------------------------ model unwrapping


def _model_state(model: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model, nn.Module):
        return strip_wrapper_prefixes(unwrap_model(model).state_dict())
    if isinstance(model, Mapping):
        return strip_wrapper_prefixes(model)
    raise TypeError(f"model must be an nn.Module or a state dict, got {type(model).__name__}")


def _state_of(obj: Any, name: str) -> Any:
    """``obj.state_dict()`` for an object that has one, a mapping as it is, or None."""
    if obj is None:
        return None
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{name} must have a state_dict() or be a state dict, got {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------- plain types


def to_plain(obj: Any, where: str = "args") -> Any:
    """``obj`` as plain Python (dict, list, str, numbers, None) that a ``weights_only`` load reads.

    Dataclasses and ``argparse.Namespace`` become dicts, paths, enums, dtypes and devices strings.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; keys must be str or int")
            out[key] = to_plain(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value, where)
    if isinstance(obj, (os.PathLike, torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(
        f"{where} has type {type(obj).__name__}, which a weights_only load cannot read; use plain types "
        "(dict, list, str, int, float, bool, None)"
    )


# ---------------------------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """The torch CPU (and CUDA, when initialised), numpy and Python random states, as tensors and plain types."""
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "key": torch.from_numpy(np.asarray(np_key, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the random states that :func:`capture_rng` captured, so that the next random numbers repeat."""
    if not isinstance(state, Mapping) or "torch" not in state:
        raise ValueError("rng state must be the dict that capture_rng() returns (a checkpoint's 'rng')")
    torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        s = state["numpy"]
        key = np.asarray(s["key"].cpu().numpy() if torch.is_tensor(s["key"]) else s["key"], dtype=np.uint32)
        np.random.set_state((s["name"], key, int(s["pos"]), int(s["has_gauss"]), float(s["cached_gaussian"])))
    if "python" in state:
        s = state["python"]
        ints = s["state"].tolist() if torch.is_tensor(s["state"]) else list(s["state"])
        random.setstate((int(s["version"]), tuple(int(v) for v in ints), s["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # a different number of GPUs: each process restores its own device's state
            torch.cuda.set_rng_state(cuda_states[torch.cuda.current_device() % len(cuda_states)])


# ------------------------------------------------------------------------------------------- save and load


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module | Mapping[str, Any],
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
    epoch: int,
    step: int = 0,
    scaler: Any = None,
    ema: Any = None,
    args: Any,
    class_names: list[str] | tuple[str, ...] | None = None,
    rng_state: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write MAE's checkpoint dict (plus ``step``, ``class_names``, ``rng``) to ``path`` atomically.

    Call it on the main process only. ``model``/``ema`` may be wrapped (DDP, compiled): their plain state is saved.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError(f"epoch must be an int, got {epoch!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    ckpt: dict[str, Any] = {
        "model": _model_state(model),
        "optimizer": _state_of(optimizer, "optimizer"),
        "epoch": epoch,
        "step": step,
        "scaler": _state_of(scaler, "scaler"),
        "ema": None,
        "args": to_plain(args, "args"),
        "class_names": None if class_names is None else [str(c) for c in class_names],
    }
    if not isinstance(ckpt["args"], dict):
        raise TypeError(f"args must be a dict, dataclass or argparse.Namespace, got {type(args).__name__}")
    if ema is not None:
        ema_module = getattr(ema, "module", ema)  # a ModelEma or a model
        ckpt["ema"] = _model_state(ema_module if isinstance(ema_module, nn.Module) else ema)
        if hasattr(ema, "num_updates"):
            ckpt["ema_num_updates"] = int(ema.num_updates)
    if rng_state:
        ckpt["rng"] = capture_rng()
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ValueError(f"extra key {key!r} clashes with a checkpoint field; reserved: {sorted(_RESERVED)}")
        ckpt[key] = value
    return write_atomic(path, lambda fh: torch.save(ckpt, fh))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; a clear error names a missing or corrupt file.
    ``mmap=True`` maps the tensors instead of reading them (for a look at the config or the epoch).

    Raises FileNotFoundError (missing), :class:`CorruptCheckpointError` (empty, truncated, damaged, not a dict)
    or :class:`UnsafeCheckpointError` (holds Python objects that ferfast refuses to unpickle); both are
    ValueErrors. Official MAE checkpoints (whose ``args`` is an ``argparse.Namespace``) load too; their ``args``
    becomes a dict.
    """
    path = Path(path)
    ckpt = torch_load_safe(path, map_location=map_location, mmap=mmap)
    if not isinstance(ckpt, dict):
        raise CorruptCheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict", path)
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = vars(ckpt["args"])
    return ckpt


def load_latest_checkpoint(
    output_dir: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False
) -> tuple[Path, dict[str, Any], list[tuple[Path, CorruptCheckpointError]]] | None:
    """The newest checkpoint in ``output_dir`` that loads, for a resume: ``(path, checkpoint, damaged)``, or None
    when the folder has no checkpoint.

    Tries ``checkpoint-last.pth``, then the numbered ``checkpoint-{epoch}.pth`` files, newest first; a file that
    is empty, truncated or damaged is skipped and listed in ``damaged`` with its error (the caller warns). When
    none loads, a :class:`CorruptCheckpointError` names every file tried. A file holding Python objects that
    ferfast refuses to unpickle (:class:`UnsafeCheckpointError`) is not damage but someone else's file: it is
    raised, not skipped. (A numbered checkpoint is a hard link of the ``checkpoint-last.pth`` of its epoch, so a
    file damaged in place may damage its twin too; the fallback then goes one more checkpoint back.)
    """
    candidates = [checkpoint_path(output_dir)] if checkpoint_path(output_dir).is_file() else []
    candidates += [p for _, p in reversed(list_checkpoints(output_dir))]
    damaged: list[tuple[Path, CorruptCheckpointError]] = []
    for path in candidates:
        try:
            return path, load_checkpoint(path, map_location=map_location, mmap=mmap), damaged
        except CorruptCheckpointError as exc:
            damaged.append((path, exc))
        except FileNotFoundError:  # pruned meanwhile
            continue
    if not damaged:
        return None
    listing = "; ".join(str(exc) for _, exc in damaged)
    raise CorruptCheckpointError(
        f"cannot resume in {output_dir}: no checkpoint there loads ({listing}). Move the damaged files aside to "
        "start this run over",
        damaged[0][0],
    )


# ------------------------------------------------------------------------------------------ files on disk


def checkpoint_path(output_dir: str | os.PathLike, epoch: int | None = None) -> Path:
    """MAE's file name in ``output_dir``: ``checkpoint-{epoch}.pth`` (fit's: ``epoch`` = finished epochs), or
    ``checkpoint-last.pth`` for None."""
    return Path(output_dir) / (LAST_CHECKPOINT if epoch is None else f"checkpoint-{int(epoch)}.pth")


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The ``checkpoint-{epoch}.pth`` files in ``output_dir``, oldest epoch first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _EPOCH_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``checkpoint-last.pth`` if present, else the highest epoch, else None."""
    last = checkpoint_path(output_dir)
    if last.is_file():
        return last
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def remove_stale_temp_files(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a killed run left in ``output_dir``; returns them.

    Only ferfast's own names are touched: ``.checkpoint-{last,best,<epoch>}.pth.XXXXXXXX.tmp`` (an interrupted
    :func:`save_checkpoint`) and ``.checkpoint-*.pth.link.tmp`` (an interrupted :func:`link_checkpoint`). Call
    it at a run's start, before any checkpoint is written, from the process that writes them.
    """
    removed = remove_temp_files(output_dir, _TEMP_RE)
    removed += remove_temp_files(output_dir, _LINK_TEMP_RE)
    return sorted(removed)


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``checkpoint-{epoch}.pth`` files (never ``checkpoint-last.pth``)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be a non-negative int, got {keep!r}")
    found = list_checkpoints(output_dir)
    removed = [p for _, p in found[: max(0, len(found) - keep)]]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def link_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` the same file as ``src`` atomically: a hard link (no second copy of a large file), else a copy."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)

        def _copy(fh: IO[bytes]) -> None:
            with open(src, "rb") as source:
                shutil.copyfileobj(source, fh, length=16 << 20)

        write_atomic(dst, _copy)
    return dst


def save_epoch_checkpoint(
    output_dir: str | os.PathLike,
    *,
    epoch: int,
    keep: int | None = None,
    numbered: bool = True,
    number: int | None = None,
    **kwargs: Any,
) -> Path:
    """Write ``checkpoint-last.pth`` (atomically), link it as ``checkpoint-{number}.pth``, keep the ``keep`` newest.

    ``number``: the numbered file's N (default ``epoch``; :func:`~ferfast.engine.loop.fit` passes the number of
    finished epochs, ``epoch + 1``). ``keep=None`` keeps every numbered file, ``keep=0`` only
    ``checkpoint-last.pth``; ``numbered=False`` writes only ``checkpoint-last.pth`` (between two periodic
    checkpoints, or in the middle of an epoch). Returns the last file's path.
    """
    last = save_checkpoint(checkpoint_path(output_dir), epoch=epoch, **kwargs)
    if numbered and keep != 0:
        link_checkpoint(last, checkpoint_path(output_dir, epoch if number is None else number))
    if keep is not None:
        prune_checkpoints(output_dir, keep)
    return last
