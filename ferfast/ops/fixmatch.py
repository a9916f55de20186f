"""FixMatch's unlabeled loss (SSFER stage 2), fused: pseudo-labels, confidence mask and masked CE in one pass."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch

__all__ = ["FixMatchLoss", "fixmatch_loss"]


def fixmatch_loss(
    logits_weak_teacher: Tensor,
    logits_strong: Tensor,
    threshold: float = 0.7,
    *,
    return_pseudo_labels: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """FixMatch's loss on an unlabeled batch: ``mean_i mask_i * CE(strong_i, argmax(weak_i))``.

    Args:
        logits_weak_teacher: ``[B, K]`` the (EMA) teacher's logits on the weak views; a constant (no gradient).
        logits_strong: ``[B, K]`` the student's logits on the strong views of the same images.
        threshold: confidence threshold in [0, 1]: a pseudo-label counts when its softmax probability
            is ``>= threshold`` (SSFER: 0.7).
        return_pseudo_labels: also return the pseudo-labels (``[B]`` int64, first index of the largest
            weak logit) and the mask (``[B]``, 1 = confident), e.g. to log pseudo-label accuracy.

    Returns:
        ``(loss, mask_rate)`` (``+ (pseudo_labels, mask)``): float32 scalars (float64 for float64 logits). The
        loss is averaged over the whole batch, confident or not (FixMatch's ``mean``); its gradient in
        ``logits_strong`` is computed in the forward pass and only scaled in backward.
    """
    logits_weak = _checks.tensor(logits_weak_teacher, "logits_weak_teacher")
    logits_strong = _checks.tensor(logits_strong, "logits_strong")
    _checks.ndim(logits_weak, 2, "logits_weak_teacher", "[B, K]")
    _checks.floating(logits_weak, "logits_weak_teacher")
    _checks.floating(logits_strong, "logits_strong")
    if logits_weak.shape[0] == 0 or logits_weak.shape[1] == 0:
        raise ValueError(f"logits_weak_teacher must be a non-empty [B, K], got {tuple(logits_weak.shape)}")
    if logits_strong.shape != logits_weak.shape:
        raise ValueError(
            f"logits_strong must have logits_weak_teacher's shape {tuple(logits_weak.shape)}, "
            f"got {tuple(logits_strong.shape)}"
        )
    _checks.same_device(logits_strong, "logits_strong", logits_weak, "logits_weak_teacher")
    threshold = _checks.unit_interval(threshold, "threshold")
    logits_weak = logits_weak.detach()
    op = dispatch("fixmatch_loss", resolve_backend(logits_weak.device, backend))
    compute_grad = torch.is_grad_enabled() and logits_strong.requires_grad
    loss, rate, pseudo, mask, _ = op(logits_weak, logits_strong, threshold, compute_grad)
    return (loss, rate, pseudo, mask) if return_pseudo_labels else (loss, rate)


class FixMatchLoss(nn.Module):
    """Module form of :func:`fixmatch_loss`: ``loss, mask_rate = criterion(logits_weak_teacher, logits_strong)``."""

    def __init__(self, threshold: float = 0.7, backend: str | None = None) -> None:
        super().__init__()
        self.threshold = _checks.unit_interval(threshold, "threshold")
        self.backend = backend

    def forward(self, logits_weak_teacher: Tensor, logits_strong: Tensor) -> tuple[Tensor, Tensor]:
        return fixmatch_loss(logits_weak_teacher, logits_strong, self.threshold, backend=self.backend)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
