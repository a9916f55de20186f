"""The epoch loop every stage runs: per-iteration learning rate, autocast, accumulation, clipping, EMA,
logs, a non-finite-loss guard, and an atomic checkpoint per epoch that a killed run resumes from exactly.

Stages differ only in their step (:mod:`ferfast.engine.steps`) and schedule; :func:`fit` runs any of
them. Resuming restores the model, the optimizer, the EMA and the random states; the
loaders' draws depend only on (seed, epoch, step), so on the CPU with a fixed seed the losses after a
resume equal those of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferfast.engine.checkpoint import latest_checkpoint, load_checkpoint, restore_rng, save_epoch_checkpoint
from ferfast.engine.dist import is_main_process
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import MetricLogger, NonFiniteLossError, check_finite, epoch_summary, progress
from ferfast.engine.schedule import set_lr
from ferfast.engine.steps import StepOutput, autocast, to_device
from ferfast.models.checkpoint import unwrap_model

__all__ = ["FitConfig", "fit"]


@dataclass
class FitConfig:
    """How :func:`fit` trains: epochs, the learning rate at a fractional epoch, precision, and housekeeping."""

    epochs: int
    lr_at: Callable[[float], float]  #: learning rate at a fractional epoch (MAE sets it every iteration)
    output_dir: Path
    precision: str = "fp32"  #: "bf16" (autocast) or "fp32"
    clip_grad: float | None = None  #: max gradient norm, or None
    accum_steps: int = 1  #: gradient accumulation (optimizer steps every accum_steps batches)
    nonfinite: str = "stop"  #: a NaN/inf loss "stop"s the run, or "rollback"s to the last checkpoint
    log_every: int = 20  #: a JSON-lines record every this many batches (0: epoch records only)
    keep: int | None = 2  #: epoch checkpoints kept besides checkpoint-last.pth (None: all)
    show_progress: bool | None = None  #: progress bar (None: on a terminal, rank 0)
    max_rollbacks: int = 3  #: give up after this many rollbacks in one run

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs > 0):
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        if not (isinstance(self.accum_steps, int) and self.accum_steps > 0):
            raise ValueError(f"accum_steps must be a positive int, got {self.accum_steps!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 or None, got {self.clip_grad!r}")
        self.output_dir = Path(self.output_dir)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEma | None) -> int:
    """Load a checkpoint written by :func:`fit` into the training objects; returns the next epoch."""
    ckpt = load_checkpoint(path)
    unwrap_model(model).load_state_dict(ckpt["model"])
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"], num_updates=ckpt.get("ema_num_updates"))
    if ckpt.get("rng") is not None:
        restore_rng(ckpt["rng"])
    return int(ckpt["epoch"]) + 1


def fit(
    step_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], StepOutput],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    config: FitConfig,
    *,
    device: torch.device | str = "cpu",
    ema: ModelEma | None = None,
    args: Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
    logger: MetricLogger | None = None,
    resume: bool = True,
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    stage: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs of ``loader`` with ``step_fn``; returns one record per epoch run.

    ``loader`` has ``set_epoch(epoch)``, ``len()`` and yields batch dicts (the ferfast loaders).
    ``resume``: continue from ``output_dir``'s last checkpoint when there is one. ``on_epoch_start``
    lets a stage reseed its own random draws per epoch (e.g. face-IoU Mixup's generator).
    """
    device = torch.device(device)
    cfg = config
    args = dict(args or {})
    start_epoch = 0
    if resume and (last := latest_checkpoint(cfg.output_dir)) is not None:
        start_epoch = _restore(last, model, optimizer, ema)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the loader yields no batch per epoch (dataset smaller than one batch with drop_last?)")
    history: list[dict[str, float]] = []
    rollbacks = 0
    epoch = start_epoch
    while epoch < cfg.epochs:
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        loader.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        seen, t0, rolled_back = 0, time.perf_counter(), False
        optimizer.zero_grad(set_to_none=True)
        bar = progress(loader, desc=f"{stage} epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch,
                       enabled=cfg.show_progress)
        for i, batch in enumerate(bar):
            global_step = epoch * steps_per_epoch + i
            if i % cfg.accum_steps == 0:
                lr = set_lr(optimizer, cfg.lr_at(epoch + i / steps_per_epoch))
            batch = to_device(batch, device)
            with autocast(device, cfg.precision):
                out = step_fn(model, batch)
            if not check_finite(out.loss, global_step, cfg.nonfinite, epoch=epoch):
                rolled_back = True
                break
            (out.loss / cfg.accum_steps).backward()
            if (i + 1) % cfg.accum_steps == 0 or i + 1 == steps_per_epoch:
                if cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
            for key, value in out.stats.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            seen += 1
            if logger is not None and cfg.log_every and (i + 1) % cfg.log_every == 0:
                logger.log({"stage": stage, "epoch": epoch, "lr": lr, **out.stats}, step=global_step, prefix=stage)
        if rolled_back:
            rollbacks += 1
            last = latest_checkpoint(cfg.output_dir)
            if last is None or rollbacks > cfg.max_rollbacks:
                why = f"gave up after {cfg.max_rollbacks} rollbacks" if last else "no checkpoint to roll back to"
                raise NonFiniteLossError(f"{stage}: non-finite loss at epoch {epoch}; {why}")
            epoch = _restore(last, model, optimizer, ema)
            continue
        record = {"epoch": float(epoch), **{k: v / max(seen, 1) for k, v in sums.items()}, "lr": float(lr),
                  "time_s": time.perf_counter() - t0}
        history.append(record)
        if logger is not None:
            logger.log({"stage": stage, **record}, step=(epoch + 1) * steps_per_epoch, prefix=f"{stage}/epoch")
        if is_main_process():
            save_epoch_checkpoint(cfg.output_dir, epoch=epoch, keep=cfg.keep, model=model, optimizer=optimizer,
                                  ema=ema, args={**args, "stage": stage}, class_names=class_names)
            if cfg.show_progress is not False:
                print(epoch_summary(epoch, {k: v for k, v in record.items() if k != "epoch"},
                                    total_epochs=cfg.epochs, elapsed_s=record["time_s"]), flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        epoch += 1
    if history and not all(math.isfinite(v) for v in history[-1].values()):
        raise NonFiniteLossError(f"{stage}: the last epoch's statistics are not finite: {history[-1]}")
    return history
