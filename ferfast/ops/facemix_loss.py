"""SSFER's face-IoU Mixup loss, fused with its gradients (Liger's fused-CE idea)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch
from ferfast.reference.mixup import flip_perm

__all__ = ["FaceMixLoss", "facemix_loss"]


def facemix_loss(
    logits_real: Tensor,
    logits_mixed: Tensor,
    y: Tensor,
    y_soft: Tensor,
    iou: Tensor,
    perm: Tensor | None = None,
    *,
    backend: str | None = None,
    validate: bool | None = None,
) -> Tensor:
    """SSFER's stage-1 loss:
    ``[sum_i CE_soft(mixed_i, y_soft_i) + sum_i (1 - iou_i) (CE(real_i, y_i) + CE(real_perm(i), y_perm(i)))] / B``.

    Faces that overlap their partner's (IoU near 1) make realistic mixes, and the loss leans on the
    virtual images; faces that do not overlap make unrealistic mixes, and the real images weigh more.

    Args:
        logits_real: ``[B, K]`` logits of the real (original) images.
        logits_mixed: ``[B, K]`` logits of the mixed images (``face_mixup``).
        y: ``[B]`` int64 labels of the real images (no label smoothing on their CE, as in SSFER).
        y_soft: ``[B, K]`` Mixup targets of the mixed images (:func:`mixup_soft_targets`).
        iou: ``[B]`` IoU of each face with its partner's (:func:`paired_box_iou`), in [0, 1].
        perm: ``[B]`` int64 partners; ``None`` is SSFER's flip pairing.
        validate: check the values of ``y`` and ``perm`` (in range) and ``iou`` (in [0, 1], no NaN), raising a
            ``ValueError`` naming the argument; ``None``: on CPU tensors only, while
            :func:`ferfast.ops.value_checks` is on (a check reads the values back, which synchronises a GPU).

    Returns:
        The loss, float32 (float64 for float64 logits). The gradients for both logits are computed in the
        forward pass (one read of each tensor) and only scaled in backward; ``y``, ``y_soft`` and ``iou``
        are constants.
    """
    logits_real = _checks.tensor(logits_real, "logits_real")
    logits_mixed = _checks.tensor(logits_mixed, "logits_mixed")
    _checks.ndim(logits_real, 2, "logits_real", "[B, K]")
    _checks.floating(logits_real, "logits_real")
    _checks.floating(logits_mixed, "logits_mixed")
    b, k = logits_real.shape
    if b == 0 or k == 0:
        raise ValueError(f"logits_real must be a non-empty [B, K], got {tuple(logits_real.shape)}")
    if logits_mixed.shape != logits_real.shape:
        raise ValueError(
            f"logits_mixed must have logits_real's shape {tuple(logits_real.shape)}, got {tuple(logits_mixed.shape)}"
        )
    _checks.same_device(logits_mixed, "logits_mixed", logits_real, "logits_real")
    if logits_mixed.dtype != logits_real.dtype:
        raise TypeError(f"logits_mixed must have logits_real's dtype {logits_real.dtype}, got {logits_mixed.dtype}")
    y = _checks.long_vector(y, b, "y", logits_real, "logits_real")
    y_soft = _checks.tensor(y_soft, "y_soft")
    _checks.floating(y_soft, "y_soft")
    if y_soft.shape != logits_real.shape:
        raise ValueError(f"y_soft must have shape {tuple(logits_real.shape)}, got {tuple(y_soft.shape)}")
    _checks.same_device(y_soft, "y_soft", logits_real, "logits_real")
    iou = _checks.tensor(iou, "iou")
    _checks.floating(iou, "iou")
    if tuple(iou.shape) != (b,):
        raise ValueError(f"iou must have shape [{b}], got {tuple(iou.shape)}")
    _checks.same_device(iou, "iou", logits_real, "logits_real")
    perm = flip_perm(b, logits_real.device) if perm is None else _checks.long_vector(perm, b, "perm", y, "y")
    chosen = resolve_backend(logits_real.device, backend)
    if _checks.values_checked(validate, y, perm, backend=chosen):
        _checks.index_range(y, k, "y", "class labels")
        _checks.index_range(perm, b, "perm", "partner indices")
    # The cpu kernels check y and perm as they read them but not iou, so iou is checked here for every
    # backend (on CPU tensors by default; one read of B values). An IoU outside [0, 1] or NaN would
    # silently weigh the real images' loss by 1 - iou outside [0, 1] (negative, or NaN for the whole batch).
    if _checks.values_checked(validate, iou):
        _checks.unit_values(iou, "iou", "IoUs of each face with its partner's")
    y_soft, iou = y_soft.detach(), iou.detach()
    compute_grad = torch.is_grad_enabled() and (logits_real.requires_grad or logits_mixed.requires_grad)
    loss, _, _ = dispatch("facemix_loss", chosen)(logits_real, logits_mixed, y, y_soft, iou, perm, compute_grad)
    return loss


class FaceMixLoss(nn.Module):
    """Module form of :func:`facemix_loss` (``criterion(logits_real, logits_mixed, y, y_soft, iou, perm)``)."""

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend

    def forward(
        self,
        logits_real: Tensor,
        logits_mixed: Tensor,
        y: Tensor,
        y_soft: Tensor,
        iou: Tensor,
        perm: Tensor | None = None,
    ) -> Tensor:
        return facemix_loss(logits_real, logits_mixed, y, y_soft, iou, perm, backend=self.backend)
