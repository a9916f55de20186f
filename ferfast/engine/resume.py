"""A training run's checkpoint state and resuming from it: what :func:`ferfast.engine.loop.fit` writes into every
checkpoint besides the weights (the position in the run, the best score, the rollbacks' learning-rate factor and
skipped batches, every rank's random states, a mid-epoch checkpoint's running sums) and how a run restores it.

The checkpoint files themselves (atomic writes, numbered links, pruning, damaged-file fallback) are
:mod:`ferfast.engine.checkpoint`'s; the loop that calls these is :mod:`ferfast.engine.loop`'s.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferfast.engine.checkpoint import (
    BEST_CHECKPOINT,
    capture_rng,
    link_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    remove_stale_temp_files,
    restore_rng,
    save_epoch_checkpoint,
)
from ferfast.engine.dist import all_gather_objects, barrier, get_rank, get_world_size, is_main_process
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import MetricLogger

__all__ = [
    "BEST_KEY",
    "RANK_RNG_KEY",
    "Resumed",
    "RunState",
    "TrainedState",
    "checkpoint_position",
    "drop_replayed_records",
    "own_checkpoint",
    "remove_stale_temps",
    "restore",
    "resume_source",
    "save_run_checkpoint",
]

#: checkpoint entry ``{"metric", "value", "epoch"}``: the best evaluation so far (``checkpoint-best.pth``'s;
#: its ``epoch`` is 0-based, like the checkpoint's own ``epoch`` field)
BEST_KEY = "best"
#: checkpoint entry of a distributed run: every rank's random states, in rank order
RANK_RNG_KEY = "rank_rng"
#: checkpoint entry: the number of finished epochs (1-based number of the last one); ``step`` counts the batches of
#: the next epoch already trained (0 at an epoch's end)
EPOCHS_DONE_KEY = "epochs_done"
#: checkpoint entries: the run's planned epochs and steps per epoch when it was written
EPOCHS_KEY = "epochs"
STEPS_KEY = "steps_per_epoch"
#: checkpoint entry: the learning-rate factor that rollbacks left (1.0: none)
LR_SCALE_KEY = "lr_scale"
#: checkpoint entry: the global steps whose batches rollbacks skip
SKIPPED_KEY = "skipped_steps"
#: checkpoint entry of a mid-epoch checkpoint: the epoch's running sums (the loop's ``_DeviceStats.snapshot``)
EPOCH_STATS_KEY = "epoch_stats"


@dataclass
class TrainedState:
    """What a checkpoint holds and a resume restores, besides the epoch."""

    model: nn.Module  #: the bare module
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None
    scaler: torch.amp.GradScaler | None


@dataclass
class RunState:
    """What :func:`fit` carries from epoch to epoch besides the weights, and writes into every checkpoint."""

    steps_per_epoch: int
    meta: dict[str, Any]  #: save_checkpoint's ``args`` and ``class_names``
    best: dict | None = None
    lr_scale: float = 1.0  #: the rollbacks' learning-rate factor, on top of ``lr_at``
    skipped: set[int] = field(default_factory=set)  #: global steps whose batches are skipped
    rollbacks: int = 0
    tried: list[str] = field(default_factory=list)  #: what each rollback changed, for the give-up


@dataclass
class Resumed:
    """A checkpoint restored by :func:`restore`: where it stands and what the run continues with."""

    path: Path
    epochs_done: int  #: finished epochs: the next epoch's 0-based index
    step: int  #: batches of the next epoch already trained (0: at an epoch's end)
    best: dict | None
    lr_scale: float
    skipped: set[int]
    epoch_stats: dict | None  #: a mid-epoch checkpoint's running sums
    planned_epochs: int | None  #: the epochs of the run that wrote it (None: an older checkpoint)
    steps_per_epoch: int | None
    #: a mid-epoch checkpoint's random states: restored once the epoch's first batch is drawn (see
    #: :func:`_train_one_epoch`); None when already restored (an epoch's end)
    rng: dict | None


def checkpoint_position(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """``(finished epochs, batches of the next epoch trained)`` of a checkpoint; one without ``epochs_done`` (MAE's,
    older ferfast's) was written at the end of its ``epoch`` (0-based)."""
    if ckpt.get(EPOCHS_DONE_KEY) is not None:
        return int(ckpt[EPOCHS_DONE_KEY]), int(ckpt.get("step") or 0)
    return int(ckpt["epoch"]) + 1, 0


def own_checkpoint(output_dir: Path, why: str, stacklevel: int) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``output_dir`` that loads (``load_latest_checkpoint``), with one warning (rank 0)
    naming the damaged newer files it skipped and the one used; ``why``: "resuming" or "rolling back";
    ``stacklevel``: the warning's, pointing at :func:`fit`'s caller."""
    found = load_latest_checkpoint(output_dir)
    if found is None:
        return None
    path, ckpt, damaged = found
    if damaged and is_main_process():
        skipped = "; ".join(str(exc) for _, exc in damaged)
        warnings.warn(
            f"skipping damaged checkpoint{'s' if len(damaged) > 1 else ''} ({skipped}); {why} from {path} instead",
            stacklevel=stacklevel,
        )
    return path, ckpt


def resume_source(
    output_dir: Path, resume: bool, resume_from: str | os.PathLike | None
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a run continues from, loaded: its own folder's newest intact one (a killed run; a damaged
    ``checkpoint-last.pth`` falls back to the newest numbered checkpoint that loads), else ``resume_from``."""
    if resume and (own := own_checkpoint(output_dir, "resuming", stacklevel=4)) is not None:
        return own
    if resume_from is None:
        return None
    path = Path(resume_from)
    if not path.is_file():
        raise FileNotFoundError(f"resume_from: checkpoint not found: {path}")
    return path, load_checkpoint(path)


def remove_stale_temps(output_dir: Path) -> None:
    """Delete the temporary files that a run killed during a checkpoint write left behind, and say so (rank 0)."""
    if not is_main_process():
        return
    removed = remove_stale_temp_files(output_dir)
    if removed:
        warnings.warn(
            f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} left in {output_dir} "
            f"by an interrupted checkpoint write: {', '.join(p.name for p in removed)}",
            stacklevel=3,
        )


def restore_rank_rng(ckpt: Mapping[str, Any]) -> None:
    """This rank's random states when the checkpoint has every rank's (same world size), else rank 0's."""
    per_rank = ckpt.get(RANK_RNG_KEY)
    if per_rank and len(per_rank) == get_world_size():
        restore_rng(per_rank[get_rank()])
    elif ckpt.get("rng") is not None:
        restore_rng(ckpt["rng"])


def restore(path: Path, ckpt: Mapping[str, Any], state: TrainedState, stage: str) -> Resumed:
    """Restore a checkpoint written by :func:`fit` and loaded from ``path`` (on every rank): the weights and
    optimizer states now, the random states now at an epoch's end and later in the middle of one."""
    saved = (ckpt.get("args") or {}).get("stage")
    if saved is not None and saved != stage:
        raise ValueError(f"{path} is a checkpoint of {saved!r}, not of {stage!r}: resume from the same stage")
    state.model.load_state_dict(ckpt["model"])
    if ckpt.get("optimizer") is not None:
        state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.load_state_dict(ckpt["ema"], num_updates=ckpt.get("ema_num_updates"))
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    done, step = checkpoint_position(ckpt)
    rng = None
    if step:
        rng = {"rng": ckpt.get("rng"), RANK_RNG_KEY: ckpt.get(RANK_RNG_KEY)}
    else:
        restore_rank_rng(ckpt)
    planned, steps = ckpt.get(EPOCHS_KEY), ckpt.get(STEPS_KEY)
    return Resumed(
        path=path,
        epochs_done=done,
        step=step,
        best=ckpt.get(BEST_KEY),
        lr_scale=float(ckpt.get(LR_SCALE_KEY) or 1.0),
        skipped={int(g) for g in ckpt.get(SKIPPED_KEY) or ()},
        epoch_stats=ckpt.get(EPOCH_STATS_KEY) if step else None,
        planned_epochs=None if planned is None else int(planned),
        steps_per_epoch=None if steps is None else int(steps),
        rng=rng,
    )


def save_run_checkpoint(
    output_dir: Path,
    done: int,
    step: int,
    state: TrainedState,
    run: RunState,
    *,
    epochs: int,
    keep: int,
    numbered: bool,
    improved: bool = False,
    epoch_stats: dict[str, Any] | None = None,
) -> None:
    """checkpoint-last.pth (+ the numbered link when ``numbered``, the best link when ``improved``) from rank 0,
    with every rank's random states; all wait. ``done``: finished epochs; ``step``: batches of the next epoch
    trained (0: an epoch's end); ``epochs``: the run's planned epochs; ``keep``: numbered checkpoints kept."""
    rank_rng = all_gather_objects(capture_rng()) if get_world_size() > 1 else None  # a collective: every rank
    if is_main_process():
        extra: dict[str, Any] = {
            EPOCHS_DONE_KEY: done,
            EPOCHS_KEY: epochs,
            STEPS_KEY: run.steps_per_epoch,
            LR_SCALE_KEY: run.lr_scale,
            SKIPPED_KEY: sorted(run.skipped),
        }
        if run.best is not None:
            extra[BEST_KEY] = run.best
        if rank_rng is not None:
            extra[RANK_RNG_KEY] = rank_rng
        if epoch_stats is not None:
            extra[EPOCH_STATS_KEY] = epoch_stats
        last = save_epoch_checkpoint(
            output_dir,
            epoch=done - 1,
            step=step,
            keep=keep,
            number=done,
            numbered=numbered,
            model=state.model,
            optimizer=state.optimizer,
            scaler=state.scaler,
            ema=state.ema,
            extra=extra,
            **run.meta,
        )
        if improved:
            link_checkpoint(last, output_dir / BEST_CHECKPOINT)
    barrier()  # a rollback or the next stage reads what rank 0 wrote


def drop_replayed_records(logger: MetricLogger | None, stage: str, done: int, step: int, steps: int) -> int:
    """Drop ``stage``'s records that a killed run (or the steps a rollback discards) wrote to the log after the
    checkpoint at (``done`` finished epochs, ``step`` batches into the next): a record's ``step`` is the global
    index of the last step it covers, so those at or past ``done * steps + step`` go (at that step itself, an
    epoch record of epoch ``done`` or earlier stays: older versions logged epoch records one step later). Other
    stages' records stay."""
    if logger is None:
        return 0
    resume_at = done * steps + step

    def replayed(record: dict[str, Any]) -> bool:
        at = record.get("step")
        if record.get("stage") != stage or isinstance(at, bool) or not isinstance(at, (int, float)):
            return False
        if at != resume_at:
            return at > resume_at
        epoch = record.get("epoch")
        return not (isinstance(epoch, (int, float)) and epoch <= done)

    return logger.drop_records(replayed)
