"""ferfast's training engine: checkpoints, EMA, metrics, the optimizer and its learning-rate schedules, logs,
distributed helpers and the output folders' locks.

The training loops (pretrain, stage 1, stage 2; :mod:`ferfast.engine.stages`) are built from these parts, the
steps of :mod:`ferfast.engine.steps` (one training step of each stage, with its loss), the data of
:mod:`ferfast.engine.stage_data` and the evaluation of :mod:`ferfast.engine.evaluation`.
"""

from __future__ import annotations

from ferfast.engine.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    capture_rng,
    checkpoint_path,
    latest_checkpoint,
    link_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    restore_rng,
    save_checkpoint,
    save_epoch_checkpoint,
    strip_wrapper_prefixes,
    to_plain,
    unwrap_model,
    write_atomic,
)
from ferfast.engine.dist import (
    DistInfo,
    all_gather_objects,
    all_gather_tensor,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from ferfast.engine.ema import ModelEma
from ferfast.engine.evaluation import evaluate
from ferfast.engine.handover import Handover, hand_over
from ferfast.engine.logging import (
    LOG_FILE,
    MetricLogger,
    NonFiniteLossError,
    epoch_summary,
    nonfinite_found,
    progress,
    tensorboard_available,
)
from ferfast.engine.loop import BEST_KEY, RANK_RNG_KEY, FitConfig, fit
from ferfast.engine.metrics import classification_metrics, confusion_matrix, confusion_png_size, save_confusion_png
from ferfast.engine.optim import cosine_with_warmup, scaled_lr, set_lr, step_decay
from ferfast.engine.precision import choose_precision, resolve_precision
from ferfast.engine.prefetch import DevicePrefetcher, prepare_batch
from ferfast.engine.runlock import LOCK_FILE, RunLockedError, lock_holder, move_aside, run_lock
from ferfast.engine.stage_data import FERData, prepare_data
from ferfast.engine.stages import run_pretrain, run_stage1, run_stage2
from ferfast.engine.steps import PRECISIONS, StepOutput, autocast, pretrain_step, stage1_step, stage2_step, to_device
from ferfast.models.checkpoint import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "BEST_CHECKPOINT",
    "BEST_KEY",
    "LAST_CHECKPOINT",
    "LOCK_FILE",
    "LOG_FILE",
    "PRECISIONS",
    "RANK_RNG_KEY",
    "CheckpointError",
    "CorruptCheckpointError",
    "DevicePrefetcher",
    "DistInfo",
    "FERData",
    "FitConfig",
    "Handover",
    "MetricLogger",
    "ModelEma",
    "NonFiniteLossError",
    "RunLockedError",
    "StepOutput",
    "UnsafeCheckpointError",
    "all_gather_objects",
    "all_gather_tensor",
    "all_reduce_mean",
    "autocast",
    "barrier",
    "broadcast_object",
    "capture_rng",
    "checkpoint_path",
    "choose_precision",
    "classification_metrics",
    "cleanup",
    "confusion_matrix",
    "confusion_png_size",
    "cosine_with_warmup",
    "distributed",
    "epoch_summary",
    "evaluate",
    "fit",
    "get_rank",
    "get_world_size",
    "hand_over",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "latest_checkpoint",
    "link_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "lock_holder",
    "move_aside",
    "nonfinite_found",
    "prepare_batch",
    "prepare_data",
    "pretrain_step",
    "progress",
    "prune_checkpoints",
    "remove_stale_temp_files",
    "resolve_precision",
    "restore_rng",
    "run_lock",
    "run_pretrain",
    "run_stage1",
    "run_stage2",
    "save_checkpoint",
    "save_confusion_png",
    "save_epoch_checkpoint",
    "scaled_lr",
    "set_lr",
    "stage1_step",
    "stage2_step",
    "step_decay",
    "strip_wrapper_prefixes",
    "tensorboard_available",
    "to_device",
    "to_plain",
    "unwrap_model",
    "write_atomic",
]
