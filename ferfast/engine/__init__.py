"""ferfast's training engine: the training loop and the three stages' drivers, checkpoints, EMA, metrics, the
learning-rate schedules, distributed set-up and the errors a run can raise.

This package exports what a caller driving or extending training uses. The parts behind them live in their own
modules: the steps of :mod:`ferfast.engine.steps` (one training step of each stage, with its loss), the data of
:mod:`ferfast.engine.stage_data`, the optimizer of :mod:`ferfast.engine.optim`, the collective helpers of
:mod:`ferfast.engine.dist` and the logs of :mod:`ferfast.engine.logging`; import those from their modules.
"""

from __future__ import annotations

from ferfast.engine.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unwrap_model,
)
from ferfast.engine.dist import DistInfo, cleanup, get_rank, get_world_size, init_distributed, is_main_process
from ferfast.engine.ema import ModelEma
from ferfast.engine.evaluation import evaluate
from ferfast.engine.logging import MetricLogger, NonFiniteLossError
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.metrics import classification_metrics, confusion_matrix
from ferfast.engine.optim import cosine_with_warmup, step_decay
from ferfast.engine.prefetch import DevicePrefetcher
from ferfast.engine.runlock import RunLockedError
from ferfast.engine.stages import run_pretrain, run_stage1, run_stage2
from ferfast.engine.steps import StepOutput, pretrain_step, stage1_step, stage2_step
from ferfast.models.checkpoint import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "CheckpointError",
    "CorruptCheckpointError",
    "DevicePrefetcher",
    "DistInfo",
    "FitConfig",
    "MetricLogger",
    "ModelEma",
    "NonFiniteLossError",
    "RunLockedError",
    "StepOutput",
    "UnsafeCheckpointError",
    "classification_metrics",
    "cleanup",
    "confusion_matrix",
    "cosine_with_warmup",
    "evaluate",
    "fit",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "pretrain_step",
    "run_pretrain",
    "run_stage1",
    "run_stage2",
    "save_checkpoint",
    "stage1_step",
    "stage2_step",
    "step_decay",
    "unwrap_model",
]
