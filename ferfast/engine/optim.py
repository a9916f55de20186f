"""The optimizer and its learning rate, in one place: AdamW's parameter groups (MAE's, layer-wise lr decay
included), MAE's linear scaling rule, and the schedules, set on the optimizer every iteration as MAE does (no
LRScheduler).

Every schedule starts with the same linear warmup (:func:`linear_warmup`); then pretraining and stage 1 follow a
half-cycle cosine (MAE's ``adjust_learning_rate``, :func:`cosine_with_warmup`), stage 2 a step decay at epochs 20
and 40 (:func:`step_decay`), or the rate stays constant. :func:`set_lr` honours per-group ``lr_scale`` (layer-wise
lr decay).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ferfast.config import OptimConfig
from ferfast.engine.dist import get_world_size

__all__ = [
    "cosine_with_warmup",
    "effective_batch_size",
    "linear_warmup",
    "lr_function",
    "make_optimizer",
    "param_groups",
    "set_lr",
    "step_decay",
]

# ------------------------------------------------------------------------------------------- schedules


def _number(value: object, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if float(value) < 0 or (positive and float(value) == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value!r}")
    return float(value)


def linear_warmup(step: float, warmup_steps: float, base_lr: float) -> float:
    """The warmup every schedule starts with: ``base_lr * step / warmup_steps``, from 0 (for ``step`` below
    ``warmup_steps``; MAE's ``adjust_learning_rate``)."""
    return base_lr * step / warmup_steps


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
        return linear_warmup(step, warmup_steps, base_lr)
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every param group's ``lr`` to ``lr * group.get("lr_scale", 1)`` (MAE's rule); returns ``lr``."""
    lr = _number(lr, "lr")
    if not hasattr(optimizer, "param_groups"):
        raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
    return lr


# ------------------------------------------------------------------------------------ optimizer


def _layer_id(name: str, num_layers: int) -> int:
    """MAE's ``get_layer_id_for_vit``: 0 for the embeddings, ``i + 1`` for ``blocks.i``, ``num_layers`` for the rest."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW's parameter groups as MAE's: no weight decay on 1-d parameters and the model's ``no_weight_decay()``.

    With ``layer_decay`` (MAE's ``util/lr_decay.py`` ``param_groups_lrd``), one group per (layer, decay) whose
    ``lr_scale = layer_decay ** (num_layers - layer_id)``; :func:`set_lr` multiplies by it.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_decay is None:
        decay = [p for n, p in named if not (p.ndim <= 1 or n in skip)]
        no_decay = [p for n, p in named if p.ndim <= 1 or n in skip]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"layer_decay needs a ViT with .blocks, got {type(model).__name__}")
    num_layers = len(blocks) + 1
    groups: dict[str, dict] = {}
    for name, p in named:
        no_wd = p.ndim <= 1 or name in skip
        layer = _layer_id(name, num_layers)
        group = groups.setdefault(
            f"layer_{layer}_{'no_decay' if no_wd else 'decay'}",
            {
                "params": [],
                "weight_decay": 0.0 if no_wd else weight_decay,
                "lr_scale": layer_decay ** (num_layers - layer),
            },
        )
        group["params"].append(p)
    return list(groups.values())


def effective_batch_size(batch_size: int, optim: OptimConfig) -> int:
    """MAE's effective batch: images per step and process x processes x accumulation steps."""
    return batch_size * get_world_size() * optim.accum_steps


def make_optimizer(model: nn.Module, optim: OptimConfig, effective_batch: int) -> tuple[torch.optim.Optimizer, float]:
    """AdamW on :func:`param_groups` (``optim.layer_decay`` included); returns it and its base learning rate
    (``optim.lr``, else MAE's linear scaling rule for ``effective_batch``: :meth:`OptimConfig.effective_lr`)."""
    lr = optim.effective_lr(effective_batch)
    groups = param_groups(model, optim.weight_decay, optim.layer_decay)
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())  # 3x faster on the CPU (docs/design.md)
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas, eps=optim.eps, fused=fused), lr


def lr_function(optim: OptimConfig, epochs: int, base_lr: float) -> Callable[[float], float]:
    """The learning rate at a fractional epoch: :func:`linear_warmup` over ``optim.warmup_epochs``, then cosine
    (down to ``optim.min_lr`` at ``epochs``) / step / constant."""

    def lr_at(epoch: float) -> float:
        if epoch < optim.warmup_epochs:
            return linear_warmup(epoch, optim.warmup_epochs, base_lr)
        if optim.schedule == "cosine":
            return cosine_with_warmup(epoch, epochs, optim.warmup_epochs, base_lr, optim.min_lr)
        if optim.schedule == "step":
            return step_decay(epoch, optim.milestones, optim.gamma, base_lr)
        return base_lr

    return lr_at
