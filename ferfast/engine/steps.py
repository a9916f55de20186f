"""One training step of each stage, as plain functions: batch in, loss (and statistics) out.

The loops (pretrain, stage 1, stage 2) call these; so do the tests, which compare them with
literal transcriptions of SSFER's steps. A batch is the loaders' dict (``ferfast.data``) on the training
device with its images normalised (:class:`~ferfast.engine.prefetch.DevicePrefetcher` does both); models
are ``nn.Module``s: a classifier ``model(images) -> logits``, and for pretraining an MAE whose
``forward(images, mask_ratio) -> (loss, pred, mask)``.

No step reads a tensor on the host: the statistics are detached 0-d tensors on the batch's device, which
:func:`~ferfast.engine.fit` sums on the device and reads every ``log_every`` steps, so that a GPU never waits for
the Python side (and a step can be captured in a CUDA graph).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferfast.ops import FaceIoUMixup, fixmatch_loss

__all__ = ["PRECISIONS", "StepOutput", "autocast", "pretrain_step", "stage1_step", "stage2_step", "to_device"]

#: what :func:`autocast` takes: bf16 or fp16 autocast (fp16 needs a GradScaler, which :func:`~ferfast.engine.fit`
#: brings), or none
PRECISIONS = ("bf16", "fp16", "fp32")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepOutput:
    """A step's loss (to backpropagate) and its scalar statistics (for the logs).

    ``stats`` values are detached 0-d tensors on the step's device (Python numbers are accepted too, but reading
    a tensor into one synchronises the host with the device: the built-in steps never do).
    """

    loss: Tensor
    stats: dict[str, Tensor | float]


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (asynchronous copies from pinned memory); other values as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast (``precision="bf16"``/``"fp16"``) on the batch's device, or nothing (``"fp32"``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def pretrain_step(mae: nn.Module, batch: dict[str, Tensor], mask_ratio: float = 0.75) -> StepOutput:
    """MAE pretraining: reconstruct the masked patches of ``batch["images"]``."""
    loss, _pred, mask = mae(batch["images"], mask_ratio=mask_ratio)
    return StepOutput(loss, {"loss": loss.detach(), "mask_ratio": mask.detach().float().mean()})


def stage1_step(
    model: nn.Module, batch: dict[str, Tensor], mixup: FaceIoUMixup | None, label_smoothing: float = 0.0
) -> StepOutput:
    """Stage 1 with ``mixup``: face-IoU Mixup of the labeled batch, one forward pass over ``[originals; mixed]``,
    SSFER's loss (Mixup's own label smoothing applies, not ``label_smoothing``). Without (``stage1.mixup`` false):
    cross-entropy with ``label_smoothing`` on the labeled batch.

    Under DDP the batch is the rank's local one: Mixup pairs images within it, so N ranks are not bit-identical to
    one process mixing the global batch (SSFER's flip pairing would pair other images).
    """
    if mixup is None:
        loss = F.cross_entropy(model(batch["images"]), batch["labels"], label_smoothing=label_smoothing)
        return StepOutput(loss, {"loss": loss.detach()})
    mixed = mixup({"images": batch["images"], "labels": batch["labels"], "boxes": batch.get("boxes")})
    logits = model(mixed.images)
    loss = mixed.loss(logits)
    stats = {"loss": loss.detach(), "lam": mixed.lam.detach().float().mean(), "face_iou": mixed.iou.detach().mean()}
    return StepOutput(loss, stats)


def stage2_step(
    student: nn.Module,
    teacher: nn.Module,
    batch: dict[str, Tensor],
    *,
    threshold: float = 0.7,
    unlabeled_weight: float = 5.0,
    label_smoothing: float = 0.1,
) -> StepOutput:
    """Stage 2 (FixMatch): supervised CE with ``label_smoothing`` (stage 2's own) on the labeled view +
    ``unlabeled_weight`` x the EMA teacher's confident pseudo-labels (weak view, ``p >= threshold``) on the student's
    strong view.

    The student sees the labeled and strong views in one forward pass; the teacher only the weak view. Under DDP
    both losses are means over the rank's local batch (DDP then averages the gradients over the ranks).
    """
    n = batch["images"].shape[0]
    with torch.no_grad():
        logits_weak = teacher(batch["images_weak"]).float()
    logits = student(torch.cat([batch["images"], batch["images_strong"]]))
    loss_x = F.cross_entropy(logits[:n].float(), batch["labels"], label_smoothing=label_smoothing)
    loss_u, mask_rate = fixmatch_loss(logits_weak, logits[n:].float(), threshold)
    loss = loss_x + unlabeled_weight * loss_u
    stats = {
        "loss": loss.detach(),
        "loss_x": loss_x.detach(),
        "loss_u": loss_u.detach(),
        "mask_rate": mask_rate.detach(),
    }
    return StepOutput(loss, stats)
