"""Plain-PyTorch specification of face-IoU Mixup (SSFER stage 1).

``face_mixup_ref`` and ``mixup_soft_targets_ref`` are Mixup as in timm's ``data/mixup.py``
(``Mixup._mix_batch``/``_mix_elem`` and ``mixup_target``) with the partner of image ``i``
given by ``perm[i]`` (timm and SSFER: ``flip(0)``, i.e. ``perm[i] = B-1-i``), written out of
place. ``facemix_loss_ref`` is SSFER's loss (``fine-tune.py``, the ``Facemixup_active``
branch). ``ssfer_stage1_loss_ref`` transcribes the released code path literally (in-place
mix, IoU loop, two cross-entropy calls) and is the benchmarks' baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ferfast.reference.boxes import ssfer_paired_iou_loop_ref
from ferfast.reference.dtypes import acc_dtype

__all__ = [
    "face_mixup_ref",
    "facemix_loss_ref",
    "flip_perm",
    "mixup_soft_targets_ref",
    "ssfer_mix_batch_",
    "ssfer_stage1_loss_ref",
]


def flip_perm(batch: int, device: torch.device | str | None = None) -> Tensor:
    """SSFER's and timm's pairing: image ``i`` is mixed with image ``B-1-i`` (``x.flip(0)``)."""
    return torch.arange(batch - 1, -1, -1, device=device)


def _lam_column(lam: Tensor | float, batch: int, ndim: int, dtype: torch.dtype, device) -> Tensor:
    """``lam`` (a number, a 0-d tensor or one value per sample) shaped to broadcast over ``[B, ...]``."""
    lam = torch.as_tensor(lam, dtype=dtype, device=device)
    return lam.reshape(-1).expand(batch).reshape(batch, *([1] * (ndim - 1)))


def face_mixup_ref(x: Tensor, lam: Tensor | float, perm: Tensor, with_originals: bool = False) -> Tensor:
    """``lam * x + (1 - lam) * x[perm]``, out of place, computed in float32 and stored in ``x.dtype``.

    ``x`` is ``[B, ...]`` (images ``[B, C, H, W]``); ``lam`` a number or 0-d tensor (one weight per
    batch: timm's ``batch`` mode, SSFER) or ``[B]`` (one per sample: timm's ``elem`` mode, or
    ``pair`` mode when ``lam[i] == lam[perm[i]]``); ``perm`` ``[B]`` int64, the partner of each
    sample. With ``with_originals`` the result is ``[2B, ...]``: ``x`` then the mixed images,
    so that one forward pass serves the real and the virtual images.
    """
    acc = acc_dtype(x)
    lam_c = _lam_column(lam, x.shape[0], x.dim(), acc, x.device)
    mixed = (x.to(acc) * lam_c + x[perm].to(acc) * (1 - lam_c)).to(x.dtype)
    return torch.cat([x, mixed]) if with_originals else mixed


def mixup_soft_targets_ref(
    y: Tensor, num_classes: int, lam: Tensor | float, perm: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """timm's ``mixup_target`` with partner ``perm``: ``lam * y1 + (1 - lam) * y1[perm]`` where ``y1``
    is the one-hot of ``y`` [B] with ``on = 1 - s + s/K`` and ``off = s/K`` (``s = label_smoothing``).

    Returns ``[B, K]`` float32 (float64 when ``lam`` is a float64 tensor).
    """
    acc = acc_dtype(lam) if isinstance(lam, Tensor) else torch.float32
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off
    y1 = torch.full((y.shape[0], num_classes), off, dtype=acc, device=y.device)
    y1.scatter_(1, y.long().reshape(-1, 1), on)
    lam_c = _lam_column(lam, y.shape[0], 2, acc, y.device)
    return y1 * lam_c + y1[perm] * (1 - lam_c)


def facemix_loss_ref(
    logits_real: Tensor, logits_mixed: Tensor, y: Tensor, y_soft: Tensor, iou: Tensor, perm: Tensor
) -> Tensor:
    """SSFER's face-IoU Mixup loss:
    ``[sum_i CE_soft(mixed_i, y_soft_i) + sum_i (1 - iou_i) * (CE(real_i, y_i) + CE(real_perm(i), y_perm(i)))] / B``.

    ``logits_real``/``logits_mixed`` ``[B, K]`` (the real and the mixed images), ``y`` ``[B]``
    int64 labels, ``y_soft`` ``[B, K]`` Mixup targets, ``iou`` ``[B]`` the IoU of each face with
    its partner's, ``perm`` ``[B]`` the partner. The real images' CE has no label smoothing
    (SSFER's ``nn.CrossEntropyLoss(reduction='none')``). Computed in float32 (float64 for
    float64 logits); gradients flow to the logits only.
    """
    acc = acc_dtype(logits_real, logits_mixed)
    ce_real = F.cross_entropy(logits_real.to(acc), y, reduction="none")
    ce_mixed = F.cross_entropy(logits_mixed.to(acc), y_soft.to(acc), reduction="none")
    weight = 1 - iou.to(acc)
    return (ce_mixed.sum() + (weight * (ce_real + ce_real[perm])).sum()) / y.shape[0]


def ssfer_mix_batch_(x: Tensor, lam: float) -> Tensor:
    """SSFER's ``utils/mixup.py:_mix_batch`` (timm's): mixes ``x`` with ``x.flip(0)`` *in place*."""
    if lam == 1.0:
        return x
    x_flipped = x.flip(0).mul_(1.0 - lam)
    return x.mul_(lam).add_(x_flipped)


def ssfer_stage1_loss_ref(
    logits_origin: Tensor,
    logits_mixed: Tensor,
    inputs: Tensor,
    labels: Tensor,
    detections: list[Tensor],
    lam: float,
    num_classes: int,
    label_smoothing: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """SSFER's released stage-1 step without the network, op for op (``fine-tune.py``):
    mix ``inputs`` in place, timm's ``mixup_target``, the IoU loop of ``tensor2box2iou``
    (on the CPU, then copied to ``inputs``' device), two ``CrossEntropyLoss(reduction='none')``
    calls and the weighted sum. Returns ``(loss, mixed inputs)``.

    The network's two forward passes (on the mixed tensor, twice: the released code's "real"
    images are the mixed ones) are the caller's ``logits_origin`` and ``logits_mixed``.
    """
    if inputs.shape[0] % 2:
        raise ValueError("Batch size should be even when using this")  # SSFER's Mixup assert
    mixed_inputs = ssfer_mix_batch_(inputs, lam)
    off = label_smoothing / num_classes
    y1 = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    y1.scatter_(1, labels.long().view(-1, 1), 1.0 - label_smoothing + off)
    mixed_labels = y1 * lam + y1.flip(0) * (1.0 - lam)
    origin_loss = F.cross_entropy(logits_origin, labels, reduction="none")
    mixed_loss = F.cross_entropy(logits_mixed, mixed_labels, reduction="none")
    iou = ssfer_paired_iou_loop_ref(detections).to(inputs.device)
    loss = (mixed_loss.sum() + ((1 - iou) * (origin_loss + origin_loss.flip(0))).sum()) / len(inputs)
    return loss, mixed_inputs
