"""Learning-rate schedules as plain functions, set on the optimizer every iteration as MAE does (no LRScheduler).

Pretraining and stage 1: linear warmup then a half-cycle cosine (MAE's ``adjust_learning_rate``); stage 2:
step decay at epochs 20 and 40. ``set_lr`` honours per-group ``lr_scale`` (layer-wise lr decay).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch

__all__ = ["cosine_with_warmup", "scaled_lr", "set_lr", "step_decay"]


def _number(value: object, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if float(value) < 0 or (positive and float(value) == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value!r}")
    return float(value)


def cosine_with_warmup(
    step: float, total_steps: float, warmup_steps: float, base_lr: float, min_lr: float = 0.0
) -> float:
    """MAE's ``adjust_learning_rate`` per iteration: ``base_lr * step / warmup_steps`` during the warmup, then a
    half-cycle cosine from ``base_lr`` down to ``min_lr`` at ``total_steps`` (held there afterwards).

    ``step`` may be fractional (MAE passes ``epoch + it / iters_per_epoch`` with epochs as the unit).
    """
    step = _number(step, "step")
    total_steps = _number(total_steps, "total_steps", positive=True)
    warmup_steps = _number(warmup_steps, "warmup_steps")
    base_lr = _number(base_lr, "base_lr")
    min_lr = _number(min_lr, "min_lr")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_decay(epoch: float, milestones: Iterable[float] = (20, 40), gamma: float = 0.1, base_lr: float = 1.0) -> float:
    """``base_lr * gamma ** k`` where ``k`` is the number of milestones reached (``epoch >= m``), as MultiStepLR."""
    epoch = _number(epoch, "epoch")
    gamma = _number(gamma, "gamma")
    base_lr = _number(base_lr, "base_lr")
    ms = [_number(m, "milestones") for m in milestones]
    if ms != sorted(ms):
        raise ValueError(f"milestones must be increasing, got {list(milestones)}")
    return base_lr * gamma ** sum(epoch >= m for m in ms)


def scaled_lr(blr: float, eff_batch: int) -> float:
    """MAE's linear scaling rule: ``lr = blr * eff_batch / 256`` (``eff_batch`` = batch x accum_iter x world size)."""
    blr = _number(blr, "blr")
    if isinstance(eff_batch, bool) or not isinstance(eff_batch, numbers.Integral) or eff_batch < 1:
        raise ValueError(f"eff_batch must be a positive int, got {eff_batch!r}")
    return blr * int(eff_batch) / 256


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every param group's ``lr`` to ``lr * group.get("lr_scale", 1)`` (MAE's rule); returns ``lr``."""
    lr = _number(lr, "lr")
    if not hasattr(optimizer, "param_groups"):
        raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
    return lr
